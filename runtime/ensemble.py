"""Geometric self-ensemble: run the model on flipped / transposed copies of the image
and average the results mapped back (EDSR's "x8" test-time augmentation).

The model is not exactly equivariant to these transforms (its 2x2 space-to-depth grid,
its training noise), so averaging removes part of its error at a proportional cost. The
first 2 and the first 4 of ``TRANSFORMS`` are each a group, so every ensemble size is
equivariant to its own transforms (for an image that needs no padding).

The copies' defocus maps are combined into one map (``combine_maps``) that every copy
is restored from: where the estimates disagree, the estimator is unsure, and it errs
mostly low (it under-reads blur, and under-reading is what costs PSNR), so the ensemble
reads an upper quantile of them rather than their mean.
"""

from dataclasses import dataclass
from typing import Any, Sequence, Tuple

from runtime.device_arrays import array_module

SIZES = (1, 2, 4, 8)

#: Per pixel, the ensemble's map is this quantile (linear interpolation) of its copies'
#: estimates. Chosen on training pictures rendered like the held-out photo set
#: (``models/default/README.md``, "Self-ensemble map").
MAP_QUANTILE = 0.75

#: Rows combined at a time (bounds the stacked temporaries).
_BAND_ROWS = 256


def combine_maps(maps: Sequence[Any], quantile: float = MAP_QUANTILE) -> Any:
    """The per-pixel ``quantile`` of N same-shaped (H, W) float32 maps (NumPy or CuPy),
    as a new float32 (H, W) array; the map itself for N = 1."""
    if len(maps) == 1:
        return maps[0]
    xp = array_module(maps[0])
    out = xp.empty(maps[0].shape, dtype=xp.float32)
    for y in range(0, out.shape[0], _BAND_ROWS):
        band = xp.stack([m[y : y + _BAND_ROWS] for m in maps])
        out[y : y + _BAND_ROWS] = xp.quantile(band, quantile, axis=0, overwrite_input=True)
    return out


@dataclass(frozen=True)
class Transform:
    """Transpose the two spatial axes, then flip rows and / or columns."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def apply(self, array: Any, axes: Tuple[int, int] = (0, 1)) -> Any:
        """The transformed view of ``array`` whose spatial axes are ``axes`` (NumPy or CuPy)."""
        if self.transpose:
            array = array.swapaxes(*axes)
        return self._flip(array, axes)

    def undo(self, array: Any, axes: Tuple[int, int] = (0, 1)) -> Any:
        """The inverse of ``apply``: flips first, then the transposition."""
        array = self._flip(array, axes)
        return array.swapaxes(*axes) if self.transpose else array

    def _flip(self, array: Any, axes: Tuple[int, int]) -> Any:
        index = [slice(None)] * array.ndim
        for axis, flip in zip(axes, (self.flip_rows, self.flip_cols)):
            if flip:
                index[axis] = slice(None, None, -1)
        return array[tuple(index)]


#: Identity and transposition; + the two 180-degree turns of them; + the four others.
TRANSFORMS = (
    Transform(),
    Transform(transpose=True),
    Transform(flip_rows=True, flip_cols=True),
    Transform(True, True, True),
    Transform(flip_cols=True),
    Transform(flip_rows=True),
    Transform(True, flip_rows=True),
    Transform(True, flip_cols=True),
)
