"""GPU arrays passed by the user: CuPy arrays, torch CUDA tensors, anything with
``__cuda_array_interface__`` or a CUDA DLPack device. Detected by attribute only:
torch is never imported here.
"""

import importlib
from types import ModuleType
from typing import Any

import numpy as np

from runtime.errors import BackendError

#: DLPack device types of memory that a CUDA kernel can read (CUDA, CUDA managed).
_DLPACK_CUDA = (2, 13)


def is_device_array(x: Any) -> bool:
    """True for arrays that live in GPU memory."""
    if isinstance(x, np.ndarray):
        return False
    if hasattr(x, "__cuda_array_interface__"):
        return True
    dlpack_device = getattr(x, "__dlpack_device__", None)
    return dlpack_device is not None and int(dlpack_device()[0]) in _DLPACK_CUDA


def cupy_module() -> ModuleType:
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        raise BackendError("GPU arrays need CuPy (pip install cupy-cuda12x or cupy-cuda13x)") from None
    return cupy


def to_cupy(x: Any) -> Any:
    """A zero-copy CuPy view of a GPU array (CuPy, torch CUDA tensor, CAI or DLPack)."""
    cupy = cupy_module()
    if isinstance(x, cupy.ndarray):
        return x
    if hasattr(x, "__cuda_array_interface__"):
        return cupy.asarray(x)
    return cupy.from_dlpack(x)


def array_module(x: Any) -> ModuleType:
    """``numpy`` for host arrays, ``cupy`` for CuPy arrays."""
    if isinstance(x, np.ndarray):
        return np
    return cupy_module()
