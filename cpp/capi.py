"""ctypes binding of the C API (``cpp/include/deblur.h``), for tests, benchmarks and Python users.

    from cpp.capi import CApi, LIBRARY
    api = CApi(LIBRARY)                       # build/cpp/libdeblur.so (``make cpp``)
    status, handle = api.create("models/default", tile=1024, threads=2)
    status, deblurred, defocus_map = api.run(handle, image)   # (H, W, 3) uint8 or float32
    api.destroy(handle)

Every call returns the C status (``OK`` = 0); ``api.error()`` is the last message.
"""

import ctypes
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

LIBRARY = Path(__file__).resolve().parent.parent / "build" / "cpp" / "libdeblur.so"
OK, ERROR_ARGUMENT, ERROR_BUNDLE, ERROR_BACKEND, ERROR_MEMORY, ERROR_INTERNAL = range(6)
UINT8, FLOAT32 = 0, 1


class Options(ctypes.Structure):
    _fields_ = [
        ("tile", ctypes.c_int32),
        ("overlap", ctypes.c_int32),
        ("tile_batch", ctypes.c_int32),
        ("threads", ctypes.c_int32),
        ("precision", ctypes.c_char_p),
        ("progress", ctypes.c_void_p),
        ("progress_user", ctypes.c_void_p),
    ]


class Info(ctypes.Structure):
    _fields_ = [
        ("size_multiple", ctypes.c_int32),
        ("tile", ctypes.c_int32),
        ("estimate_tile", ctypes.c_int32),
        ("overlap", ctypes.c_int32),
        ("estimate_overlap", ctypes.c_int32),
        ("uses_pooling", ctypes.c_int32),
        ("map_radius_scale_px", ctypes.c_double),
        ("map_max", ctypes.c_double),
    ]


class Image(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("size_bytes", ctypes.c_size_t),
        ("height", ctypes.c_int32),
        ("width", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
    ]


def contiguous(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` itself; a ValueError if it is not C-contiguous (the library reads rows
    back to back: a view such as ``a[:, ::2]`` would be read as other pixels)."""
    if not array.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (np.ascontiguousarray)")
    return array


def image_of(array: np.ndarray) -> Image:
    """A ``deblur_image`` over a C-contiguous (H, W, 3) uint8 / float32 array (no copy)."""
    dtype = {np.dtype(np.uint8): UINT8, np.dtype(np.float32): FLOAT32}[array.dtype]
    contiguous(array, "image")
    return Image(array.ctypes.data, array.nbytes, array.shape[0], array.shape[1], dtype)


class CApi:
    """The functions of ``deblur.h`` with their C signatures.

    Args:
        path: The shared library. Default: ``build/cpp/libdeblur.so``.
    """

    def __init__(self, path: Path = LIBRARY):
        lib = ctypes.CDLL(str(path))
        lib.deblur_default_options.argtypes = [ctypes.POINTER(Options)]
        lib.deblur_create.argtypes = [
            ctypes.c_char_p,
            ctypes.POINTER(Options),
            ctypes.POINTER(ctypes.c_void_p),
        ]
        lib.deblur_run.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(Image),
            ctypes.c_float,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.POINTER(Image),
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        lib.deblur_set_self_ensemble.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        lib.deblur_get_info.argtypes = [ctypes.c_void_p, ctypes.POINTER(Info)]
        lib.deblur_describe.argtypes = [ctypes.c_void_p]
        lib.deblur_describe.restype = ctypes.c_char_p
        lib.deblur_last_warning.argtypes = [ctypes.c_void_p]
        lib.deblur_last_warning.restype = ctypes.c_char_p
        lib.deblur_last_error.restype = ctypes.c_char_p
        lib.deblur_destroy.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def error(self) -> str:
        return self.lib.deblur_last_error().decode()

    def create(self, bundle: Any, **options: Any) -> Tuple[int, Optional[ctypes.c_void_p]]:
        """(status, handle or None); ``options``: fields of ``deblur_options`` (defaults otherwise)."""
        opts = Options()
        self.lib.deblur_default_options(ctypes.byref(opts))
        for key, value in options.items():
            setattr(opts, key, value)
        handle = ctypes.c_void_p()
        status = self.lib.deblur_create(str(bundle).encode(), ctypes.byref(opts), ctypes.byref(handle))
        return status, handle if status == OK else None

    def run(
        self,
        handle: Any,
        image: np.ndarray,
        scale: float = 1.0,
        dmap: Optional[np.ndarray] = None,
        out: Optional[np.ndarray] = None,
        map_out: Optional[np.ndarray] = None,
    ) -> Tuple[int, np.ndarray, np.ndarray]:
        """(status, deblurred (H, W, 3) in the image's dtype, map (H, W) float32).

        ``out`` and ``map_out`` may be given (any size: the library checks them).
        """
        out = np.empty(image.shape, image.dtype) if out is None else out
        map_out = np.empty(image.shape[:2], np.float32) if map_out is None else map_out
        status = self.lib.deblur_run(
            handle,
            ctypes.byref(image_of(image)),
            scale,
            None if dmap is None else contiguous(dmap, "defocus map").ctypes.data,
            0 if dmap is None else dmap.nbytes,
            ctypes.byref(image_of(out)),
            contiguous(map_out, "map output").ctypes.data,
            map_out.nbytes,
        )
        return status, out, map_out

    def set_self_ensemble(self, handle: Any, passes: int) -> int:
        """The status of ``deblur_set_self_ensemble``."""
        return self.lib.deblur_set_self_ensemble(handle, passes)

    def info(self, handle: Any) -> Info:
        info = Info()
        if self.lib.deblur_get_info(handle, ctypes.byref(info)) != OK:
            raise RuntimeError(self.error())
        return info

    def warning(self, handle: Any) -> str:
        """The warning of the handle's last successful run ("" when none)."""
        return self.lib.deblur_last_warning(handle).decode()

    def describe(self, handle: Any) -> str:
        return self.lib.deblur_describe(handle).decode()

    def destroy(self, handle: Any) -> None:
        self.lib.deblur_destroy(handle)
