"""Rules that decide whether a picture can be a sharp training target.

A sharp target must be a photograph (not an illustration or a render: those teach
nothing about real texture) and sharp everywhere it has detail (a photo with its own
bokeh or motion blur teaches the network that blur is the goal). Pictures are
measured after ``downscale``, at the scale training sees them.

Every measure takes an (H, W, 3) float32 sRGB image in [0, 1].
"""

import math
from dataclasses import asdict, dataclass
from typing import Optional

import cv2
import numpy as np

#: Bump when a rule or threshold changes: the corpus report records it.
CURATION_VERSION = 5

#: Downscale factor at least this (sensor noise and JPEG blocks shrink below the blur
#: being taught) and longest side at most ``MAX_SIDE`` px.
MIN_FACTOR = 2.0
MAX_SIDE = 1536
#: Drop pictures whose shorter side is below this after downscaling (Endless Sky's
#: 1440 x 720 photographs come out at 720 x 360).
MIN_SIDE = 352

#: Graphics: pixels whose 3x3 neighbourhood varies by under ``_FLAT_LEVEL`` (8-bit
#: levels) on the native-scale picture count as flat; sensor noise keeps photos off zero.
_FLAT_LEVEL = 1.0 / 255.0
MAX_FLAT_FRACTION = 0.33
#: Graphics: the fewest distinct colours (5 bits per channel) that cover 95% of pixels
#: (a grey photo has at most 32; flat-palette art has a handful).
MIN_COLOURS = 24
#: Sharpness tiles (px, at the training scale); tiles with less contrast than
#: ``_MIN_TILE_CONTRAST`` (std of the smoothed tile) hold no detail to judge.
TILE = 64
_MIN_TILE_CONTRAST = 0.05
#: A picture with detail in fewer than this share of its tiles (a smooth gradient with a
#: logo, fog) teaches little, and is how dithered renders escape the flat-area rule.
MIN_DETAILED_FRACTION = 0.2
#: A detailed tile is blurred when its sharpness is below this share of the sharpest
#: tiles' (90th percentile); a picture with more than ``MAX_BLURRED_FRACTION`` of its
#: detailed tiles blurred has its own depth of field or motion blur.
BLURRED_TILE_SHARE = 0.3
MAX_BLURRED_FRACTION = 0.4
#: A picture whose sharpest tiles are below this is soft all over.
MIN_SHARPNESS = 0.5
#: Two thumbnails' hashes closer than this many bits (of 64) are one picture.
DUPLICATE_BITS = 10


@dataclass
class Measures:
    """What the rules look at, kept in the corpus report.

    Attributes:
        flat_fraction: share of pixels in flat areas (native scale).
        colours: distinct 5-bit colours covering 95% of pixels (native scale).
        sharpness_p90: 90th percentile of the detailed tiles' sharpness.
        blurred_fraction: share of detailed tiles far less sharp than that.
        detailed_tiles: how many tiles had detail to judge.
        hash: 64-bit perceptual hash of the greyscale thumbnail, as hex.
    """

    flat_fraction: float
    colours: int
    sharpness_p90: float
    blurred_fraction: float
    detailed_tiles: int
    hash: str

    def to_dict(self) -> dict:
        return asdict(self)


def downscale(image: np.ndarray, max_side: int = MAX_SIDE, min_factor: float = MIN_FACTOR) -> np.ndarray:
    """Area-average ``image`` by ``max(min_factor, longest side / max_side)``."""
    height, width = image.shape[:2]
    factor = max(min_factor, max(height, width) / max_side)
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def flat_fraction(image: np.ndarray) -> float:
    """Share of pixels whose 3x3 neighbourhood spans under one 8-bit level in every channel."""
    kernel = np.ones((3, 3), np.uint8)
    spread = cv2.dilate(image, kernel) - cv2.erode(image, kernel)
    return float(np.mean(spread.max(axis=2) < _FLAT_LEVEL))


def colour_count(image: np.ndarray, coverage: float = 0.95) -> int:
    """Fewest distinct colours (5 bits per channel) that cover ``coverage`` of the pixels."""
    q = np.minimum((image * 32).astype(np.int32), 31)
    codes = (q[..., 0] << 10) | (q[..., 1] << 5) | q[..., 2]
    counts = np.sort(np.bincount(codes.ravel(), minlength=1 << 15))[::-1]
    return int(np.searchsorted(np.cumsum(counts), coverage * codes.size) + 1)


def sharpness_grid(image: np.ndarray, tile: int = TILE) -> np.ndarray:
    """Sharpness of each ``tile`` x ``tile`` tile: RMS Laplacian over the tile's smoothed contrast.

    A tile's contrast is the std of its grey values after a sigma-2 Gaussian: large
    structure, which blur keeps. Its Laplacian (3x3) is the finest detail, which blur
    removes. Tiles with contrast under ``_MIN_TILE_CONTRAST`` (sky, fog) have no detail
    to judge.

    Returns:
        (H // tile, W // tile) float32, NaN where a tile has no detail to judge.
    """
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    smooth = cv2.GaussianBlur(grey, (0, 0), 2.0)
    laplacian = cv2.Laplacian(grey, cv2.CV_32F, ksize=1)
    rows, cols = grey.shape[0] // tile, grey.shape[1] // tile
    grid = np.full((rows, cols), np.nan, np.float32)
    for r in range(rows):
        for c in range(cols):
            window = np.s_[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
            contrast = float(smooth[window].std())
            if contrast >= _MIN_TILE_CONTRAST:
                grid[r, c] = math.sqrt(float(np.mean(laplacian[window] ** 2))) / contrast
    return grid


def tile_sharpness(image: np.ndarray, tile: int = TILE) -> np.ndarray:
    """(N,) float32 sharpness of the detailed tiles of ``sharpness_grid``, in raster order."""
    grid = sharpness_grid(image, tile)
    return grid[np.isfinite(grid)]


def _blurred(values: np.ndarray, sharpness: np.ndarray) -> np.ndarray:
    """Which ``values`` are below ``BLURRED_TILE_SHARE`` of ``sharpness``'s 90th percentile."""
    return values < BLURRED_TILE_SHARE * np.percentile(sharpness, 90)


def blurred_fraction(sharpness: np.ndarray) -> float:
    """Share of tiles below ``BLURRED_TILE_SHARE`` of the 90th-percentile sharpness."""
    if sharpness.size == 0:
        return 0.0
    return float(np.mean(_blurred(sharpness, sharpness)))


def blurred_tiles(image: np.ndarray, tile: int = TILE) -> np.ndarray:
    """(H // tile, W // tile) bool: the detailed tiles that the picture itself has blurred
    (its own bokeh or motion blur), by the rule of ``blurred_fraction``."""
    grid = sharpness_grid(image, tile)
    detailed = np.isfinite(grid)
    if not detailed.any():
        return detailed
    return detailed & _blurred(np.where(detailed, grid, np.inf), grid[detailed])


def blurred_share(blurred: np.ndarray, y: int, x: int, size: int, tile: int = TILE) -> float:
    """Share of the tiles of ``blurred_tiles`` whose centre lies in the ``size`` x ``size``
    window at (``y``, ``x``) that are blurred; 0 when no tile centre lies in it."""
    rows = slice(_first_tile(y, tile), _first_tile(y + size, tile))
    inside = blurred[rows, _first_tile(x, tile) : _first_tile(x + size, tile)]
    return float(inside.mean()) if inside.size else 0.0


def _first_tile(start: int, tile: int) -> int:
    """Index of the first tile whose centre is at or after ``start``."""
    return max(0, math.ceil((start - tile / 2) / tile))


def thumbnail_hash(image: np.ndarray) -> int:
    """64-bit perceptual hash: signs of the 8x8 lowest DCT terms of a 32x32 grey thumbnail
    against their median (DC left out). Resolution, resampling and JPEG barely move it."""
    grey = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2GRAY)
    thumb = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(thumb)[:8, :8].ravel()[1:]
    bits = np.concatenate([[False], low > np.median(low)])
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hash_distance(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def measure(native: np.ndarray, scaled: np.ndarray) -> Measures:
    """All measures of one picture: graphics ones on ``native``, sharpness on ``scaled``."""
    sharpness = tile_sharpness(scaled)
    return Measures(
        flat_fraction=flat_fraction(native),
        colours=colour_count(native),
        sharpness_p90=float(np.percentile(sharpness, 90)) if sharpness.size else 0.0,
        blurred_fraction=blurred_fraction(sharpness),
        detailed_tiles=int(sharpness.size),
        hash=f"{thumbnail_hash(scaled):016x}",
    )


def rejection(m: Measures, scaled_shape: tuple) -> Optional[str]:
    """Why a (non-duplicate) picture is dropped, or None to keep it.

    Reasons: ``graphic`` (flat areas or few colours), ``too_small`` (shorter side
    under ``MIN_SIDE`` after downscaling), ``little_detail`` (detail in under
    ``MIN_DETAILED_FRACTION`` of the tiles), ``soft`` (no sharp detail anywhere),
    ``depth_of_field`` (part of its detail blurred: bokeh or motion blur).
    """
    if m.flat_fraction > MAX_FLAT_FRACTION or m.colours < MIN_COLOURS:
        return "graphic"
    if min(scaled_shape[:2]) < MIN_SIDE:
        return "too_small"
    tiles = (scaled_shape[0] // TILE) * (scaled_shape[1] // TILE)
    if m.detailed_tiles < MIN_DETAILED_FRACTION * tiles:
        return "little_detail"
    if m.detailed_tiles == 0 or m.sharpness_p90 < MIN_SHARPNESS:
        return "soft"
    if m.blurred_fraction > MAX_BLURRED_FRACTION:
        return "depth_of_field"
    return None
