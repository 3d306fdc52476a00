"""Description of the machine a benchmark ran on, and its short slug."""

import os
import platform
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Dict, List, Optional

from common.cpu import cpu_flags

PACKAGES = (
    "numpy",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "tensorrt",
    "cuda-python",
    "cupy-cuda12x",
    "cupy-cuda13x",
    "opencv-python-headless",
    "scikit-image",
)
REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


#: The /proc/cpuinfo flags that decide which CPU paths are fast (vector width, BF16, VNNI, AMX).
CPU_FEATURES = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def cpu_features(flags: Optional[set] = None) -> List[str]:
    """Which of ``CPU_FEATURES`` this CPU has (``flags``: /proc/cpuinfo's, read now)."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in CPU_FEATURES if f in flags]


def openvino_capabilities() -> Optional[List[str]]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU, or None without OpenVINO."""
    try:
        from runtime.openvino_backend import cpu_capabilities, ov
    except ImportError:
        return None
    return cpu_capabilities(ov.Core())


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gpu_names() -> List[str]:
    """Names of the NVIDIA GPUs ``nvidia-smi`` lists; empty without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def package_versions(names=PACKAGES) -> Dict[str, str]:
    """Installed versions of ``names``; packages not installed are left out."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def git_commit() -> str:
    """HEAD of the repository, with ``+dirty`` for uncommitted changes; "unknown" outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=REPO, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def total_memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def describe_machine(threads: int) -> dict:
    """Everything the report says about the machine.

    Args:
        threads: Threads every CPU backend was given.
    """
    return {
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "openvino_capabilities": openvino_capabilities(),
        "cpus_usable": usable_cpus(),
        "threads_used": threads,
        "memory_bytes": total_memory_bytes(),
        "gpus": gpu_names(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": package_versions(),
        "git_commit": git_commit(),
    }


def _short(name: str) -> str:
    """A few lowercase words of a CPU/GPU name: 'NVIDIA H100 80GB HBM3' -> 'h100'."""
    words = re.findall(r"[a-z0-9]+", name.lower())
    skip = {
        "nvidia",
        "intel",
        "amd",
        "r",
        "tm",
        "cpu",
        "processor",
        "core",
        "geforce",
        "corporation",
        "with",
        "radeon",
        "graphics",
    }
    keep = [
        w
        for w in words
        if w not in skip
        and not re.fullmatch(r"\d+(gb|core|-core)?", w)
        and not re.fullmatch(r"\d+(\.\d+)?ghz", w)
        and "@" not in w
    ]
    return "-".join(keep[:2]) or "unknown"


def machine_slug(machine: dict, device: str) -> str:
    """Folder name of a report: ``cpu-2core-amd-epyc`` or ``gpu-h100-pcie``.

    Args:
        machine: ``describe_machine`` output.
        device: ``cpu`` or ``cuda`` (the backends measured).
    """
    if device == "cuda" and machine["gpus"]:
        return f"gpu-{_short(machine['gpus'][0].split(',')[0])}"
    return f"cpu-{machine['threads_used']}core-{_short(machine['cpu'])}"
