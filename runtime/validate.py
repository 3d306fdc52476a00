"""The runtime's input rules, in one place: samples, maps, scales, tiling settings, bundle fields.

``runtime.infer``, ``runtime.stream`` and ``Deblurrer`` call these (the C API mirrors
them); each refusal is a ``DeblurError`` with a one-line message, worded the same
everywhere. Checks run once per image or per setting, never per tile.

Rules (also in ``runtime/README.md``, *Validation*):

- float32 samples must be finite and lie in [0, 1]; samples at most ``FLOAT_SLACK``
  outside it (resampling overshoot) are clipped to it, anything else is refused;
- ``defocus_scale`` must be finite, >= 0 and <= ``MAX_DEFOCUS_SCALE``;
- a user map must be finite and >= 0; a map as used (times the scale) above
  ``MAP_LIMIT_FACTOR`` times the model's trained range is refused, above the trained
  range it runs with a warning;
- tile >= 1 px, overlap >= 0 px, tile batch >= 1, threads >= 1 (0 is not "default": None is);
- bundle fields: size_multiple an integer in [1, 256], map_radius_scale_px finite > 0,
  receptive fields integers >= 0, map_max (optional) finite > 0.
"""

import math
from typing import Any, Mapping, Optional

import numpy as np

from runtime.errors import BackendError, BundleError, ImageError

#: float32 samples this far outside [0, 1] are clipped; further out they are refused.
FLOAT_SLACK = 0.01
#: Largest ``defocus_scale`` accepted.
MAX_DEFOCUS_SCALE = 10.0
#: A map as used may reach this many times the trained range before it is refused.
MAP_LIMIT_FACTOR = 10.0
#: Trained map range [0, max] when the manifest has no ``map_max``: 1.0 map unit (10 px radius).
DEFAULT_MAP_MAX = 1.0
#: Largest ``size_multiple`` a bundle may declare.
MAX_SIZE_MULTIPLE = 256


def _span(array: Any) -> str:
    return f"[{float(array.min()):.4g}, {float(array.max()):.4g}]"


def _non_finite(array: Any) -> int:
    """How many samples are NaN or +-Inf (0 without a second pass when all are finite)."""
    finite = np.isfinite(array)
    return 0 if bool(finite.all()) else int(finite.size - int(finite.sum()))


def check_samples(image: Any) -> Any:
    """Refuse non-finite or out-of-range float32 samples; clip the slack (a copy).

    Args:
        image: (H, W, 3) uint8 / uint16 / float32 (NumPy or CuPy).

    Returns:
        ``image`` itself, or a clipped float32 copy where samples lay within
        ``FLOAT_SLACK`` of [0, 1].
    """
    if np.dtype(image.dtype) != np.float32:
        return image
    bad = _non_finite(image)
    if bad:
        raise ImageError(
            f"image has {bad} non-finite float32 samples (NaN or Inf); expected finite values in [0, 1]"
        )
    low, high = float(image.min()), float(image.max())
    if low >= 0.0 and high <= 1.0:
        return image
    if low < -FLOAT_SLACK or high > 1.0 + FLOAT_SLACK:
        raise ImageError(
            f"image has float32 samples in [{low:.4g}, {high:.4g}]; expected [0, 1] "
            "(divide by the maximum, or write 16-bit)"
        )
    return image.clip(0.0, 1.0)


def check_defocus_scale(scale: Any) -> float:
    """The scale as a float, or ``BackendError`` unless finite and in [0, MAX_DEFOCUS_SCALE]."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ImageError(f"--defocus-scale must be a number, got {scale!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= MAX_DEFOCUS_SCALE):
        raise ImageError(f"--defocus-scale must be in [0, {MAX_DEFOCUS_SCALE:g}], got {scale}")
    return value


def check_map(defocus_map: Any, scale: float, map_max: float) -> None:
    """Refuse a user map with NaN / Inf or negative values, or absurdly large as used.

    Args:
        defocus_map: (H, W) float32 in map units.
        scale: The (checked) ``defocus_scale`` it will be multiplied by.
        map_max: The model's trained range (``Bundle.map_max``).
    """
    bad = _non_finite(defocus_map)
    if bad:
        raise ImageError(f"defocus map has {bad} non-finite values (NaN or Inf)")
    low, high = float(defocus_map.min()), float(defocus_map.max())
    if low < 0.0:
        raise ImageError(
            f"defocus map has negative values (range [{low:.4g}, {high:.4g}]); map units are blur radii >= 0"
        )
    limit = MAP_LIMIT_FACTOR * map_max
    if high * scale > limit:
        raise ImageError(
            f"defocus map reaches {high * scale:.4g} map units as used (scale "
            f"{scale:g}), over {limit:g}: {MAP_LIMIT_FACTOR:g} times the model's "
            f"trained range of {map_max:g}"
        )


def map_range_warning(defocus_map: Any, map_max: float, radius_scale_px: float) -> Optional[str]:
    """The warning for a map as used beyond the trained range, or None."""
    high = float(defocus_map.max())
    if high <= map_max:
        return None
    return (
        f"defocus map reaches {high:.3g} map units ({high * radius_scale_px:.3g} px blur "
        f"radius), beyond the model's trained range of {map_max:g} ({map_max * radius_scale_px:g} "
        "px): expect artefacts"
    )


def check_output(restored: Any) -> None:
    """The model's float output must be finite (a NaN would be written as black)."""
    bad = _non_finite(restored)
    if bad:
        raise BackendError(
            f"the model produced {bad} non-finite output samples (NaN or Inf); with --precision fp16 try fp32"
        )


def check_tiling(tile: Optional[int], overlap: Optional[int], tile_batch: Optional[int]) -> None:
    """Refuse nonsense tiling settings (None means the default; 0 is refused)."""
    for name, value, low in (("--tile", tile, 1), ("--overlap", overlap, 0), ("--tile-batch", tile_batch, 1)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low
        ):
            raise BackendError(f"{name} must be an integer >= {low}, got {value!r}")


def check_threads(threads: Optional[int]) -> None:
    """Refuse a thread count below 1 (None: the backend's default, all cores)."""
    if threads is not None and threads < 1:
        raise BackendError(f"--threads must be >= 1, got {threads}")


def check_bundle_fields(
    size_multiple: int, radius_scale_px: float, receptive_field: Mapping[str, int], map_max: float, where: str
) -> None:
    """Refuse manifest numbers no model can have (``where`` names the manifest)."""
    if not 1 <= size_multiple <= MAX_SIZE_MULTIPLE:
        raise BundleError(f"{where}: size_multiple {size_multiple} must be in [1, {MAX_SIZE_MULTIPLE}]")
    for name, value in (("map_radius_scale_px", radius_scale_px), ("map_max", map_max)):
        if not (math.isfinite(value) and value > 0):
            raise BundleError(f"{where}: {name} {value} must be finite and > 0")
    for graph in ("estimate", "restore"):
        if receptive_field.get(graph, -1) < 0:
            raise BundleError(f"{where}: receptive_field needs {graph!r} >= 0, got {dict(receptive_field)}")
