"""``Deblurrer``: one image in, the deblurred image and its defocus map out."""

import logging
from pathlib import Path
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np

from runtime import validate
from runtime.backend import Backend, create_backend
from runtime.bundle import Bundle, load_bundle
from runtime.device_arrays import array_module, is_device_array, to_cupy
from runtime.ensemble import SIZES, TRANSFORMS, Transform, combine_maps
from runtime.errors import BackendError, ImageError
from runtime.tiling import (
    SAMPLE_MAX,
    TiledPipeline,
    estimate_tile_for,
    min_condition_chunk,
    pad_to,
    padded_size,
)

log = logging.getLogger("runtime")

_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
#: Rows converted at a time when writing the output (bounds temporaries).
_BAND_ROWS = 256
#: Default (tile, tiles per call). CPU: large tiles keep the overlap a small share
#: of the work (9% more pixels at 1080p, runtime/README.md); one tile per call
#: bounds memory. GPU: engine-sized tiles, batched to fill the device.
CPU_TILING, GPU_TILING = (1024, 1), (512, 4)


class Deblurrer:
    """Defocus deblurring of single images with a model bundle.

    Args:
        model: Bundle folder, its manifest.json, one of its .onnx / .engine files, or a
            loaded ``Bundle``. Default: ``models/default``.
        backend: ``auto``, ``tensorrt``, ``onnxruntime``, ``onnxruntime-trt`` or
            ``openvino``. Default: ``auto`` (see ``runtime.backend.create_backend``).
        device: ``cpu``, ``cuda`` or ``auto``. Default: ``cpu``.
        precision: ``fp32``, ``fp16``, ``bf16`` (OpenVINO), or None: fp16 where a TensorRT
            engine fits, else the backend's best (OpenVINO: bf16 where the CPU has it; others
            fp32; ``runtime.backend.default_precision``). Default: None.
        tile: Largest tile size in pixels; None: 1024 on the CPU, 512 on a GPU. The
            estimate pass uses tiles twice as large (``runtime.tiling.estimate_tile_for``).
        overlap: Pixels shared by neighbouring tiles; None: the receptive field of each
            pass plus a 16 px cross-fade.
        tile_batch: Tiles per graph call; None: 1 on the CPU, 4 on a GPU.
        threads: CPU threads of ONNX Runtime / OpenVINO; None: all cores.
        cuda_graphs: TensorRT: one CUDA graph per tile shape. Default: False.
        self_ensemble: Average this many flipped / transposed passes (1, 2, 4 or 8; see
            ``runtime.ensemble``), all restored from one map combined from their
            estimates: better output at that many times the cost. Default: 1.

    A context manager: ``with Deblurrer(...) as deblurrer:`` closes its backend on exit.
    """

    def __init__(
        self,
        model: Union[str, Path, Bundle, None] = None,
        backend: str = "auto",
        device: str = "cpu",
        precision: Optional[str] = None,
        tile: Optional[int] = None,
        overlap: Optional[int] = None,
        tile_batch: Optional[int] = None,
        threads: Optional[int] = None,
        cuda_graphs: bool = False,
        self_ensemble: int = 1,
    ):
        if self_ensemble not in SIZES:
            raise BackendError(
                f"self-ensemble must be one of {', '.join(map(str, SIZES))}, got {self_ensemble}"
            )
        self.transforms = TRANSFORMS[:self_ensemble]
        validate.check_tiling(tile, overlap, tile_batch)
        self.bundle = model if isinstance(model, Bundle) else load_bundle(model)
        if self.bundle.hint_backend and backend == "auto":
            backend = self.bundle.hint_backend
        if self.bundle.hint_precision:
            precision = self.bundle.hint_precision
        self.backend: Backend = create_backend(self.bundle, backend, device, precision, threads, cuda_graphs)
        default_tile, default_batch = GPU_TILING if self.backend.device_io else CPU_TILING
        self.tile, self.tile_batch = self._fit_profile(
            default_tile if tile is None else tile, default_batch if tile_batch is None else tile_batch
        )
        profile = self.backend.profile
        self.estimate_tile = estimate_tile_for(
            self.tile, self.bundle.size_multiple, None if profile is None else min(profile["max"][1:])
        )
        self.overlap = overlap
        # Condition chunks of one tile: _fit_profile keeps them inside an engine's profile.
        self.pipeline = TiledPipeline(
            self.backend.run,
            self.bundle.receptive_field,
            self.bundle.size_multiple,
            self.bundle.uses_pooling,
            self.tile,
            overlap,
            self.tile_batch,
            estimate_tile=self.estimate_tile,
            condition_chunk=self.tile,
        )
        self._map_warned = False

    def _fit_profile(self, tile: int, tile_batch: int) -> Tuple[int, int]:
        """Check the tile (the condition chunk too) against a TensorRT profile; cap the batch
        at its maximum. Tile and overlap themselves are checked by ``TiledPipeline``."""
        profile = self.backend.profile
        if profile is None:
            return tile, tile_batch
        max_batch, max_h, max_w = profile["max"]
        low = min_condition_chunk(max(profile["min"][1:]), self.bundle.size_multiple)
        if not low <= tile <= min(max_h, max_w):
            raise BackendError(
                f"--tile {tile} must lie in [{low}, {min(max_h, max_w)}] for this "
                f"engine's profile (min {profile['min']}, max {profile['max']})"
            )
        if tile_batch > max_batch:
            log.info("tile batch %d capped at the engine profile's maximum %d", tile_batch, max_batch)
        return tile, min(tile_batch, max_batch)

    def describe(self) -> str:
        return self.backend.describe()

    def run(
        self,
        image: Any,
        defocus_scale: float = 1.0,
        defocus_map: Optional[Any] = None,
        progress: Optional[Callable[[int], None]] = None,
    ) -> Tuple[Any, Any]:
        """Deblur one image.

        Args:
            image: (H, W, 3) RGB, uint8, uint16 or float32 in [0, 1] (finite; samples at most
                0.01 outside are clipped, further out refused); a NumPy array, or a GPU array
                (CuPy, torch CUDA tensor: anything with ``__cuda_array_interface__`` or CUDA
                DLPack) for the GPU backends.
            defocus_scale: Multiplies the defocus map (deblurring strength), in [0, 10].
                Default: 1.0.
            defocus_map: (H, W) float32 map to use instead of the estimate, in the
                manifest's units (blur-disc radius px / ``map_radius_scale_px``), finite
                and >= 0; it is multiplied by ``defocus_scale`` too. A map as used beyond
                the trained range (``bundle.map_max``) logs a warning, beyond 10 times
                that it is refused (``runtime.validate``).
            progress: Called with the number of tiles finished.

        Returns:
            (deblurred (H, W, 3) in the input's dtype (float32 clipped to [0, 1]),
            defocus map (H, W) float32 as used: the self-ensemble's combined map). CuPy
            arrays for GPU input, else NumPy.

        Raises:
            ImageError: A bad shape, dtype or scale; non-finite or out-of-range float32
                samples; a bad map.
            BackendError: The backend failed; non-finite model output.
        """
        on_device = is_device_array(image)
        if on_device:
            if not self.backend.device_io:
                raise BackendError(
                    f"GPU arrays need a GPU backend (this is {self.describe()}): "
                    "use device='cuda', or pass a NumPy array"
                )
            image = to_cupy(image)
            if defocus_map is not None:
                defocus_map = to_cupy(defocus_map)
        elif defocus_map is not None and is_device_array(defocus_map):
            raise ImageError("defocus_map is a GPU array but the image is not: pass both on one side")
        _check_image(image)
        image = validate.check_samples(image)
        defocus_scale = validate.check_defocus_scale(defocus_scale)
        height, width = image.shape[:2]
        ph, pw = self._padded_size(height, width)
        padded = pad_to(image, ph, pw)
        if defocus_map is not None:
            defocus_map = _check_map(defocus_map, height, width)
            validate.check_map(defocus_map, defocus_scale, self.bundle.map_max)
            defocus_map = pad_to(defocus_map, ph, pw)
        self.pipeline.progress = progress
        dmap = self._estimate(padded) if defocus_map is None else defocus_map
        if defocus_scale != 1.0:
            dmap = dmap * np.float32(defocus_scale)  # not in place: it may be the given map
        restored = self._restore(padded, dmap, self.transforms[0])
        for transform in self.transforms[1:]:
            restored += self._restore(padded, dmap, transform)
        if len(self.transforms) > 1:
            restored /= len(self.transforms)
        dmap = dmap[:height, :width]
        if not self._map_warned and (defocus_map is not None or defocus_scale > 1.0):
            # Once per Deblurrer: a stream would repeat it every frame.
            warning = validate.map_range_warning(dmap, self.bundle.map_max, self.bundle.map_radius_scale_px)
            if warning is not None:
                log.warning(warning)
                self._map_warned = True
        return _to_image(restored, height, width, image.dtype), dmap

    def _estimate(self, padded: Any) -> Any:
        """The map of the padded image: one estimate, or the ensemble's copies' estimates
        mapped back and combined (``runtime.ensemble.combine_maps``)."""
        maps = [t.undo(self.pipeline.estimate(t.apply(padded))) for t in self.transforms]
        return combine_maps(maps)

    def _restore(self, padded: Any, dmap: Any, transform: Transform) -> Any:
        """The restoration of the transformed image from the transformed map, mapped back:
        float32 (3, H, W)."""
        image, dmap = transform.apply(padded), transform.apply(dmap)
        cond_mean = self.pipeline.condition_mean(dmap) if self.bundle.uses_pooling else None
        return transform.undo(self.pipeline.restore(image, dmap, cond_mean), axes=(1, 2))

    def _padded_size(self, height: int, width: int) -> Tuple[int, int]:
        minimum = (1, 1) if self.backend.profile is None else tuple(self.backend.profile["min"][1:])
        return padded_size(height, width, self.bundle.size_multiple, minimum)

    def count_tiles(self, height: int, width: int, with_map: bool = False) -> int:
        """Tiles one ``run`` processes for an image of this size (``with_map``: given a
        ``defocus_map``, so without the estimate pass)."""
        ph, pw = self._padded_size(height, width)
        # Tiles are square, so a transposed pass has as many.
        return len(self.transforms) * self.pipeline.count_tiles(ph, pw, estimate=not with_map)

    def close(self) -> None:
        """Release the backend (TensorRT: its GPU buffers, stream and CUDA graphs)."""
        self.backend.close()

    def __enter__(self) -> "Deblurrer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_image(image: Any) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"image must be (H, W, 3) RGB, got shape {tuple(image.shape)}")
    if np.dtype(image.dtype) not in _DTYPES:
        raise ImageError(f"image dtype must be uint8, uint16 or float32, got {image.dtype}")
    if min(image.shape[:2]) < 1:
        raise ImageError(f"image is empty: shape {tuple(image.shape)}")


def _check_map(defocus_map: Any, height: int, width: int) -> Any:
    if defocus_map.ndim == 3 and defocus_map.shape[2] == 1:
        defocus_map = defocus_map[:, :, 0]
    if tuple(defocus_map.shape) != (height, width):
        raise ImageError(
            f"defocus map is {tuple(defocus_map.shape)}, the image is {(height, width)}: they must match"
        )
    return defocus_map.astype(np.float32)


def _to_image(restored: Any, height: int, width: int, dtype: Any) -> Any:
    """float32 (3, H', W') -> (height, width, 3) of ``dtype``, converted in row bands."""
    dtype = np.dtype(dtype)
    xp = array_module(restored)
    out = xp.empty((height, width, 3), dtype=dtype)
    top = SAMPLE_MAX.get(dtype, 1.0)
    for y in range(0, height, _BAND_ROWS):
        band = restored[:, y : min(y + _BAND_ROWS, height), :width].transpose(1, 2, 0)
        validate.check_output(band)
        if dtype == np.float32:
            xp.clip(band, 0.0, 1.0, out=out[y : y + _BAND_ROWS])
            continue
        band = xp.clip(band, 0.0, 1.0)
        band *= np.float32(top)
        band += np.float32(0.5)
        out[y : y + _BAND_ROWS] = band  # the cast truncates: rounds half up
    return out
