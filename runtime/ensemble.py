"""Geometric self-ensemble: run the model on flipped / transposed copies of the image
and average the results mapped back (EDSR's "x8" test-time augmentation).

The model is not exactly equivariant to these transforms (its 2x2 space-to-depth grid,
its training noise), so averaging removes part of its error at a proportional cost. The
first 2 and the first 4 of ``TRANSFORMS`` are each a group, so every ensemble size is
equivariant to its own transforms (for an image that needs no padding).
"""

from dataclasses import dataclass
from typing import Any, Tuple

SIZES = (1, 2, 4, 8)


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
