"""Sharp image sources: a user's folder, scikit-image's photographs, dead leaves.

Every source yields ``SharpImage``: an sRGB float32 (H, W, 3) image in [0, 1] and,
where one is known, its depth.
"""

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

log = logging.getLogger(__name__)

#: dead leaves stop adding discs once this fraction of pixels is uncovered;
#: those few pixels show the background colour.
_UNCOVERED_STOP = 1e-4

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

#: scikit-image (and matplotlib) photographs that train; never validated on.
TRAIN_PHOTOS = (
    "chelsea",
    "rocket",
    "stereo_motorcycle",
    "camera",
    "grass",
    "gravel",
    "brick",
    "grace_hopper",
)
#: Held out: only ``build_validation_set`` uses them.
VALIDATION_PHOTOS = ("astronaut", "coffee")


class DataError(ValueError):
    """Training data is missing, empty or unreadable (the message is one line)."""


@dataclass
class SharpImage:
    """An all-in-focus image and, if known, its depth.

    Attributes:
        image: (H, W, 3) float32 sRGB in [0, 1].
        depth: (H, W) float32 depth > 0, or None.
        name: where it came from, for logs.
    """

    image: np.ndarray
    depth: Optional[np.ndarray]
    name: str


def to_float_rgb(data: np.ndarray, origin: str) -> np.ndarray:
    """OpenCV BGR / BGRA / grey array (8 or 16 bit, or float) -> RGB float32 (H, W, 3) in [0, 1]."""
    if data.dtype == np.uint8:
        data = data.astype(np.float32) / np.float32(255.0)
    elif data.dtype == np.uint16:
        data = data.astype(np.float32) / np.float32(65535.0)
    elif data.dtype == np.float32:
        data = np.clip(data, 0.0, 1.0)
    else:
        raise DataError(f"unsupported pixel type {data.dtype} in {origin}")
    if data.ndim == 2:
        return cv2.cvtColor(data, cv2.COLOR_GRAY2RGB)
    if data.shape[2] == 4:
        return cv2.cvtColor(data, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(data, cv2.COLOR_BGR2RGB)


def read_image(path: Path) -> np.ndarray:
    """Read an image file as RGB float32 (H, W, 3) in [0, 1] (8-bit / 255, 16-bit / 65535).

    Raises:
        DataError: the file cannot be decoded.
    """
    data = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if data is None:
        raise DataError(f"cannot read image {path}")
    return to_float_rgb(data, str(path))


def list_images(folder: Path, what: str = "image", recursive: bool = False) -> List[Path]:
    """Image files inside ``folder`` (and, with ``recursive``, its sub-folders), sorted by path.

    Raises:
        DataError: the folder does not exist or holds no image files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what} folder not found: {folder}")
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {what} folder {folder}")
    return files


def split_readable(files: Sequence[Path]) -> Tuple[List[Path], List[Path]]:
    """Split files into (readable, unreadable) by OpenCV's header check (no decoding)."""
    readable = [p for p in files if cv2.haveImageReader(str(p))]
    unreadable = [p for p in files if p not in set(readable)]
    return readable, unreadable


class ImageFolderSource:
    """All images in a folder and its sub-folders (8/16-bit, grey or colour), e.g. DIV2K's
    ``DIV2K_train_HR/`` or Flickr2K's ``Flickr2K/Flickr2K_HR/``, or a corpus split.

    Files whose header OpenCV does not recognise are skipped at construction,
    counted in ``skipped`` and logged. A file that passes that check but fails to
    decode later is logged and replaced by the next readable one.

    Args:
        root: the folder.
        max_side: downscale (area) images whose longer side exceeds this, so
            crops show scene content rather than pixels; None (default) keeps
            the native size.

    Raises:
        DataError: missing folder, no image files, or none readable.
    """

    def __init__(self, root: Path, max_side: Optional[int] = None):
        self.root = Path(root)
        self.files, self.skipped = split_readable(list_images(self.root, recursive=True))
        if self.skipped:
            log.warning("skipped %d unreadable file(s) in %s", len(self.skipped), self.root)
        if not self.files:
            raise DataError(f"none of the {len(self.skipped)} image files in {self.root} is readable")
        self.max_side = max_side
        self._broken: set = set()

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> SharpImage:
        """Image ``index`` (or the next readable one) with depth None."""
        for step in range(len(self.files)):
            path = self.files[(index + step) % len(self.files)]
            if path in self._broken:
                continue
            try:
                image = read_image(path)
            except DataError as error:
                log.warning("%s; using the next image", error)
                self._broken.add(path)
                continue
            return SharpImage(_limit_size(image, self.max_side), None, str(path.relative_to(self.root)))
        raise DataError(f"no image in {self.root} could be decoded")


def _limit_size(image: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _motorcycle_depth(disparity: np.ndarray) -> np.ndarray:
    """Depth (arbitrary units) from Middlebury disparity; unknown pixels inpainted."""
    invalid = ~np.isfinite(disparity) | (disparity <= 0)
    filled = cv2.inpaint(
        np.where(invalid, 0, disparity).astype(np.float32), invalid.astype(np.uint8), 5, cv2.INPAINT_TELEA
    )
    return (1.0 / np.maximum(filled, 1.0)).astype(np.float32)


@lru_cache(maxsize=None)
def skimage_photo(name: str) -> SharpImage:
    """A photograph shipped with scikit-image (or matplotlib's ``grace_hopper``), cached.

    ``stereo_motorcycle`` is the left view with depth from its disparity map.
    """
    from skimage import data

    if name == "grace_hopper":
        import matplotlib.cbook

        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        return SharpImage(read_image(Path(str(path))), None, name)
    if name == "stereo_motorcycle":
        left, _, disparity = data.stereo_motorcycle()
        return SharpImage(_rgb_uint8(left), _motorcycle_depth(disparity), name)
    return SharpImage(_rgb_uint8(getattr(data, name)()), None, name)


def _rgb_uint8(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3]).astype(np.float32) / np.float32(255.0)


class SkimagePhotos:
    """The bundled photographs of one split.

    Args:
        split: ``"train"`` (``TRAIN_PHOTOS``) or ``"validation"`` (``VALIDATION_PHOTOS``).
    """

    def __init__(self, split: str = "train"):
        if split not in ("train", "validation"):
            raise ValueError(f"unknown split {split!r}; choose 'train' or 'validation'")
        self.names = TRAIN_PHOTOS if split == "train" else VALIDATION_PHOTOS

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> SharpImage:
        return skimage_photo(self.names[index])


def _power_law_radii(rng: np.random.Generator, count: int, r_min: float, r_max: float) -> np.ndarray:
    """Radii with density proportional to r^-3 on [r_min, r_max] (inverse CDF)."""
    u = rng.random(count)
    return (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5


def dead_leaves(
    rng: np.random.Generator,
    height: int,
    width: int,
    r_min: float = 2.0,
    r_max: Optional[float] = None,
    discs_per_px: float = 30.0,
) -> Tuple[np.ndarray, np.ndarray]:
    """Dead-leaves image with the depth implied by its occlusion order.

    ``discs_per_px * max(H, W)`` discs with radius density ~ r^-3 and uniform
    random colours are laid front to back; disc ``i`` is nearer than disc
    ``i + 1``. Discs are drawn in batches, skipping those whose bounding box
    holds no uncovered pixel, until at most 0.01% of pixels are uncovered
    (those keep a background colour).
    Edges get a 0.5 px Gaussian so they are not aliased.

    Args:
        rng: the only source of randomness.
        height, width: output size.
        r_min: smallest radius in px (default 2).
        r_max: largest radius, default ``max(H, W) / 2``.
        discs_per_px: discs per pixel of the longer side (default 30).

    Returns:
        image: (H, W, 3) float32 sRGB in [0, 1].
        depth: (H, W) float32 > 0, piecewise constant per disc.
    """
    size = max(height, width)
    count = int(discs_per_px * size)
    radii = _power_law_radii(rng, count, r_min, r_max or size / 2.0)
    centres = rng.random((count, 2)) * (width, height)
    colours = rng.random((count + 1, 3)).astype(np.float32)  # last: background
    labels = _front_to_back(centres, radii, height, width)
    # Spread the visible discs evenly in nearness by occlusion rank, or the
    # thousands of hidden discs would take most of the range. Slot ``count``
    # (label -1) is the background, behind every disc.
    shown = np.zeros(count + 1, bool)
    shown[labels] = True
    rank = np.cumsum(shown) - 1
    nearness = np.sort(rng.uniform(0.1, 1.0, int(shown.sum())))[::-1].astype(np.float32)
    image = cv2.GaussianBlur(colours[labels], (0, 0), 0.5)
    return image, 1.0 / nearness[rank[labels]]


def _front_to_back(
    centres: np.ndarray, radii: np.ndarray, height: int, width: int, batch: int = 512
) -> np.ndarray:
    """Index of the front-most disc covering each pixel, -1 where none does."""
    labels = np.full((height, width), -1, np.int32)
    uncovered = np.ones((height, width), np.uint8)
    x0 = np.clip(centres[:, 0] - radii, 0, width).astype(np.int64)
    x1 = np.clip(centres[:, 0] + radii + 1, 0, width).astype(np.int64)
    y0 = np.clip(centres[:, 1] - radii, 0, height).astype(np.int64)
    y1 = np.clip(centres[:, 1] + radii + 1, 0, height).astype(np.int64)
    # cv2.circle takes fixed-point coordinates: 4 fractional bits via shift=4.
    fixed = np.round(np.column_stack([centres, radii]) * 16).astype(np.int64)
    left = uncovered.size
    for start in range(0, len(radii), batch):
        sat = cv2.integral(uncovered)
        ids = np.arange(start, min(start + batch, len(radii)))
        visible = (
            sat[y1[ids], x1[ids]] - sat[y0[ids], x1[ids]] - sat[y1[ids], x0[ids]] + sat[y0[ids], x0[ids]]
        ) > 0
        drawn = np.full((height, width), -1, np.int32)
        ids = ids[visible][::-1]  # back to front: nearer discs overwrite
        for i, (cx, cy, r) in zip(ids.tolist(), fixed[ids].tolist()):
            cv2.circle(drawn, (cx, cy), r, i, -1, lineType=cv2.LINE_8, shift=4)
        fresh = (uncovered > 0) & (drawn >= 0)
        labels[fresh] = drawn[fresh]
        uncovered[fresh] = 0
        left -= int(np.count_nonzero(fresh))
        if left <= _UNCOVERED_STOP * uncovered.size:
            break
    return labels
