"""Memory of the worker process: resident set (and its peak) from /proc, GPU memory in use.

Linux keeps the peak RSS in ``VmHWM``; writing ``5`` to ``/proc/self/clear_refs``
resets it to the current RSS (Linux >= 4.0), so each image size gets its own peak.
Elsewhere the peak falls back to ``getrusage`` (monotonic over the process).
"""

import resource
import sys
from pathlib import Path
from typing import Optional

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> Optional[int]:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> Optional[int]:
    """Current resident set size of this process, or None where /proc is missing."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS; False where the OS does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """Peak RSS since the last ``reset_peak_rss`` (else since the process started)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def available_bytes() -> Optional[int]:
    """``MemAvailable`` of the machine, or None where /proc/meminfo is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cuda_used_bytes() -> Optional[int]:
    """Device memory in use on GPU 0 (all processes: ``total - free`` of cudaMemGetInfo)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    err, free, total = cudart.cudaMemGetInfo()
    return int(total - free) if err == cudart.cudaError_t.cudaSuccess else None
