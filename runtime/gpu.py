"""What this machine offers TensorRT: the ``tensorrt`` module and the CUDA GPUs.

The one place that detects TensorRT and queries GPUs, for the runtime and for
``export.engine`` / ``export.verify``. cuda-python is imported only when asked.
"""

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import List, Optional

from runtime.errors import MissingDependency


@dataclass(frozen=True)
class GpuInfo:
    """Name (``NVIDIA H100 80GB HBM3``) and compute capability (``9.0``) of a CUDA device."""

    name: str
    compute_capability: str


def import_tensorrt() -> Optional[ModuleType]:
    """The ``tensorrt`` module, or None where only its type stubs (no library) are installed.

    ``tensorrt-stubs`` installs a ``tensorrt`` folder of ``.pyi`` files, which Python
    imports as an empty namespace package: it has no ``Runtime``.
    """
    try:
        trt = importlib.import_module("tensorrt")
    except Exception:  # a broken TensorRT install raises more than ImportError
        return None
    return trt if hasattr(trt, "Runtime") else None


def cuda_gpus() -> List[GpuInfo]:
    """The CUDA devices, found with cuda-python's runtime API.

    Raises:
        MissingDependency: cuda-python missing, no driver, or no device.
    """
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        raise MissingDependency("cuda-python is not installed: pip install cuda-python") from None
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or not count:
        raise MissingDependency(
            f"no NVIDIA GPU found ({err.name}): install the NVIDIA driver on a machine with an NVIDIA GPU"
        )
    gpus = []
    for index in range(count):
        err, props = cudart.cudaGetDeviceProperties(index)
        if err != cudart.cudaError_t.cudaSuccess:
            raise MissingDependency(f"CUDA device {index} cannot be queried ({err.name})")
        raw = props.name
        name = (raw.split(b"\0", 1)[0].decode() if isinstance(raw, bytes) else str(raw)).strip()
        gpus.append(GpuInfo(name.rstrip("\0"), f"{props.major}.{props.minor}"))
    return gpus


def gpu_info(device: int = 0) -> Optional[GpuInfo]:
    """CUDA device ``device``, or None without cuda-python, a driver or that device."""
    try:
        gpus = cuda_gpus()
    except MissingDependency:
        return None
    return gpus[device] if device < len(gpus) else None
