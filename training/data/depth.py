"""Plausible synthetic depth for images that come without one.

The field is built in "nearness" (inverse depth, 1/z), the quantity the
circle of confusion is linear in, from three randomly mixed parts:

* a smooth background: a tilted plane (ground-like, nearer at the bottom) plus
  low-frequency noise;
* piecewise planes on image segments, so depth edges follow image edges;
  segments come from quantising a smoothed image's colours into a few bins and
  labelling connected regions (~1 ms at 256^2; SLIC / Felzenszwalb take
  300-450 ms there);
* foreground objects: filled ellipses in front of everything else.
"""

import cv2
import numpy as np
from skimage.measure import label

#: Nearness range; depth = 1 / nearness lies in [1 / NEAREST, 1 / FARTHEST].
FARTHEST, NEAREST = 0.05, 1.5
_MIN_SEGMENT_FRACTION = 0.005


def _grid(height: int, width: int):
    """Pixel coordinates normalised to [-0.5, 0.5], shapes (H, 1) and (1, W)."""
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height - 0.5
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width - 0.5
    return ys[:, None], xs[None, :]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Tilted plane plus low-frequency noise, (H, W) nearness."""
    ys, xs = _grid(height, width)
    tilt_y = rng.uniform(0.0, 0.4) * (1.0 if rng.random() < 0.8 else -1.0)
    plane = rng.uniform(0.15, 0.5) + tilt_y * ys + rng.uniform(-0.15, 0.15) * xs
    cells = int(rng.integers(2, 7))
    coarse = rng.normal(0.0, rng.uniform(0.0, 0.15), (cells, cells)).astype(np.float32)
    return plane + cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def segment_image(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Label regions of similar colour (connected components of quantised colour).

    Args:
        rng: generator choosing the smoothing, number of bins and bin phases.
        image: (H, W, 3) float32 in [0, 1].

    Returns:
        (H, W) int32 labels from 1.
    """
    smooth = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(1.0, 3.0)))
    bins = int(rng.integers(2, 5))
    quantised = (smooth * np.float32(bins) + rng.random(3).astype(np.float32)).astype(np.int32)
    code = quantised[..., 0] + (bins + 1) * (quantised[..., 1] + (bins + 1) * quantised[..., 2])
    return label(code, background=-1, connectivity=1).astype(np.int32)


def _segment_planes(rng: np.random.Generator, image: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Replace about half of the large segments by planes at random nearness."""
    labels = segment_image(rng, image)
    count = int(labels.max()) + 1
    area = np.bincount(labels.ravel(), minlength=count)
    chosen = (area >= _MIN_SEGMENT_FRACTION * labels.size) & (rng.random(count) < 0.5)
    if not chosen.any():
        return base
    offset = rng.uniform(0.1, 0.9, count).astype(np.float32)
    tilt = rng.uniform(-0.2, 0.2, (2, count)).astype(np.float32)
    ys, xs = _grid(*labels.shape)
    planes = offset[labels] + tilt[0][labels] * ys + tilt[1][labels] * xs
    return np.where(chosen[labels], planes, base)


def _foreground(rng: np.random.Generator, nearness: np.ndarray) -> np.ndarray:
    """Put 1-3 filled ellipses in front of the scene."""
    height, width = nearness.shape
    size = max(height, width)
    for _ in range(int(rng.integers(1, 4))):
        mask = np.zeros((height, width), np.uint8)
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = tuple(int(a) for a in rng.uniform(0.08, 0.35, 2) * size)
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        front = float(nearness.max()) + float(rng.uniform(0.05, 0.5))
        nearness = np.where(mask.astype(bool), np.float32(front), nearness)
    return nearness


def synthetic_depth(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Random plausible depth for ``image``.

    Args:
        rng: the only source of randomness (same state -> same depth).
        image: (H, W, 3) float32 sRGB in [0, 1]; segment edges follow it.

    Returns:
        (H, W) float32 depth in [1 / NEAREST, 1 / FARTHEST], > 0.
    """
    height, width = image.shape[:2]
    nearness = _background(rng, height, width)
    if rng.random() < 0.6:
        nearness = _segment_planes(rng, image, nearness)
    if rng.random() < 0.5:
        nearness = _foreground(rng, nearness)
    return (1.0 / np.clip(nearness, FARTHEST, NEAREST)).astype(np.float32)
