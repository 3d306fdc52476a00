"""The CPU's instruction-set flags (Linux ``/proc/cpuinfo``), read at run time: the CPU
model of a machine can change between sessions, and with it BF16 support."""

from pathlib import Path

#: /proc/cpuinfo flags of native bf16 arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set:
    """The first processor's flags from ``cpuinfo`` (Linux); empty where unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_bf16(flags: set) -> bool:
    return any(flag in flags for flag in BF16_CPU_FLAGS)
