"""Validation on photos training never uses: the corpus's held-out packages, rendered.

Each held-out picture (``make data``'s ``holdout/`` split: whole Debian packages that
no training source reads) gives its ``crops`` most detailed, non-overlapping square
windows without a tile the picture itself has blurred (its own bokeh, where the true
map of the render would wrongly say 0; ``curation.blurred_tiles``); each window gets a
synthetic depth, a focal plane inside its depth range (so part of it stays sharp), a
noise level, and is rendered by ``render_defocus`` at every level of ``PHOTO_LEVELS``.
Everything is a function of the arguments, each window's draws of the seed and its
name: a picture added to the corpus leaves the others' samples as they were.

No held-out scene has a measured depth: the one real-depth photograph the project
has (scikit-image's ``stereo_motorcycle``) is a training photo.
"""

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from training.data import corpus, curation
from training.data.sources import list_images, read_image
from training.data.validation import render_scenes

#: Largest circle-of-confusion radii (px) of the renders, up to the trained 10 px.
PHOTO_LEVELS = (2.5, 5.0, 7.5, 10.0)


def detailed_windows(image: np.ndarray, size: int, count: int) -> List[Tuple[int, int]]:
    """Top-left corners of the ``count`` non-overlapping ``size`` x ``size`` windows with
    the most contrast (std of the grey image), on a grid of stride ``size // 2``, best
    first, leaving out windows with a tile of ``curation.blurred_tiles``; fewer when no
    more fit. Ties go to the earlier window in raster order."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    blurred = curation.blurred_tiles(image)
    height, width = grey.shape
    stride = max(1, size // 2)
    candidates = [
        (float(grey[y : y + size, x : x + size].std()), y, x)
        for y in range(0, height - size + 1, stride)
        for x in range(0, width - size + 1, stride)
        if curation.blurred_share(blurred, y, x, size) == 0.0
    ]
    chosen: List[Tuple[int, int]] = []
    for _, y, x in sorted(candidates, key=lambda c: -c[0]):
        if all(abs(y - cy) >= size or abs(x - cx) >= size for cy, cx in chosen):
            chosen.append((y, x))
        if len(chosen) == count:
            break
    return chosen


def holdout_scenes(root: Path, size: int, crops: int) -> List[Tuple[str, np.ndarray, None]]:
    """``(name, sharp crop, None)`` for every window of every held-out picture, in path order.

    Raises:
        DataError: the corpus has no held-out pictures (run ``make data``).
    """
    folder = corpus.split_folder("holdout", root)
    scenes = []
    for path in list_images(folder, "held-out photo", recursive=True):
        image = read_image(path)
        name = str(path.relative_to(folder).with_suffix(""))
        for k, (y, x) in enumerate(detailed_windows(image, size, crops)):
            scenes.append((f"{name}#{k}", np.ascontiguousarray(image[y : y + size, x : x + size]), None))
    return scenes


def build_photo_validation_set(
    root: Path = corpus.DEFAULT_ROOT,
    seed: int = 0,
    size: int = 320,
    levels: Sequence[float] = PHOTO_LEVELS,
    crops: int = 2,
    noise: bool = True,
    uniform: bool = False,
) -> List[Dict]:
    """Render the held-out photo validation set.

    Args:
        root: the corpus folder (default ``data/corpus``).
        seed: seeds depths, focus and noise (default 0).
        size: side of the square crops (default 320: a CPU validates it in seconds).
        levels: largest blur radii in px (default ``PHOTO_LEVELS``).
        crops: windows per picture (default 2).
        noise: sensor noise and 8-bit quantisation (default True).
        uniform: blur every pixel by the level's radius instead of by depth (default False).

    Returns:
        Items as ``build_validation_set``'s: tensors ``blurry``, ``sharp`` (3, H, W),
        ``defocus_map`` (1, H, W), ``has_map``, plus ``name`` (``package/picture#k``)
        and ``level`` (px), scenes in order then levels.
    """
    return render_scenes(
        holdout_scenes(root, size, crops), seed, levels, noise=noise, uniform=uniform, seed_by_name=True
    )
