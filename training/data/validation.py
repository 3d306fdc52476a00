"""A fixed validation set: held-out photographs and dead leaves at a few blur levels."""

import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from training.data.datasets import make_item
from training.data.depth import synthetic_depth
from training.data.render import Camera, render_defocus, sample_noise
from training.data.sources import VALIDATION_PHOTOS, dead_leaves, skimage_photo


def centre_crop(array: np.ndarray, size: int) -> np.ndarray:
    """Central ``size`` x ``size`` window; an array with a shorter side is first upscaled to fit."""
    height, width = array.shape[:2]
    if min(height, width) < size:
        scale = size / min(height, width)
        array = cv2.resize(
            array,
            (max(size, round(width * scale)), max(size, round(height * scale))),
            interpolation=cv2.INTER_CUBIC,
        )
        height, width = array.shape[:2]
    y0, x0 = (height - size) // 2, (width - size) // 2
    return array[y0 : y0 + size, x0 : x0 + size]


def _scenes(
    seed: int, size: int, dead_leaves_images: int
) -> List[Tuple[str, np.ndarray, Optional[np.ndarray]]]:
    scenes = []
    for name in VALIDATION_PHOTOS:
        photo = skimage_photo(name)
        depth = None if photo.depth is None else centre_crop(photo.depth, size)
        scenes.append((name, np.clip(centre_crop(photo.image, size), 0.0, 1.0), depth))
    for k in range(dead_leaves_images):
        image, depth = dead_leaves(np.random.default_rng([seed, 1000 + k]), size, size)
        scenes.append((f"dead_leaves_{k}", image, depth))
    return scenes


def build_validation_set(
    seed: int = 0,
    size: int = 256,
    levels: Sequence[float] = (2.0, 5.0, 8.0),
    dead_leaves_images: int = 2,
    psf: str = "disc",
    noise: bool = True,
) -> List[Dict]:
    """Render the validation set (deterministic in its arguments).

    Scenes are the centre crops of ``VALIDATION_PHOTOS`` (never in the training
    list) plus ``dead_leaves_images`` dead-leaves images. Each scene gets one
    synthetic depth (dead leaves keep their own), one focal plane at a depth
    quantile in [0.1, 0.9] (so part of it is sharp) and one noise level; only
    the largest blur radius changes across ``levels``.

    Args:
        seed: seeds depths, focus, noise and dead leaves (default 0).
        size: side of the square crops (default 256).
        levels: largest circle-of-confusion radii in px (default 2, 5, 8).
        dead_leaves_images: how many dead-leaves scenes (default 2).
        psf: ``"disc"`` (default) or ``"gaussian"``.
        noise: sensor noise and 8-bit quantisation (default True).

    Returns:
        One dict per (scene, level), scenes in order then levels: torch tensors
        ``blurry`` (3, H, W), ``sharp`` (3, H, W), ``defocus_map`` (1, H, W) in
        model units (radius px / MAP_RADIUS_SCALE_PX), ``has_map`` (True), plus
        ``name`` (str) and ``level`` (float, px).
    """
    return render_scenes(_scenes(seed, size, dead_leaves_images), seed, levels, psf, noise)


def render_scenes(
    scenes: Sequence[Tuple[str, np.ndarray, Optional[np.ndarray]]],
    seed: int,
    levels: Sequence[float],
    psf: str = "disc",
    noise: bool = True,
    uniform: bool = False,
    seed_by_name: bool = False,
) -> List[Dict]:
    """Render each ``(name, sharp (H, W, 3), depth (H, W) or None)`` scene at every level.

    Scene ``k`` draws its synthetic depth (where it has none), focal plane (at a depth
    quantile in [0.1, 0.9]) and noise level from ``default_rng([seed, k])``, or with
    ``seed_by_name`` from ``default_rng([seed, crc32(name)])``, so that adding or
    removing a scene leaves the others' renders as they were; only the largest blur
    radius changes across ``levels``. With ``uniform`` every pixel is
    blurred by the level's radius (a flat scene out of focus, as the trainer's
    ``uniform_fraction`` items). Items as ``build_validation_set``'s.
    """
    samples = []
    for k, (name, sharp, depth) in enumerate(scenes):
        key = zlib.crc32(name.encode()) if seed_by_name else k
        rng = np.random.default_rng([seed, key])
        if depth is None:
            depth = synthetic_depth(rng, sharp)
        focus = float(np.quantile(depth, rng.uniform(0.1, 0.9)))
        if uniform:  # the draws above still happen: the noise level stays the scene's
            depth, focus = np.ones_like(depth), 2.0
        noise_level = sample_noise(rng) if noise else None
        for j, level in enumerate(levels):
            blurry, radius = render_defocus(
                sharp,
                depth,
                Camera(focus, float(level)),
                psf=psf,
                noise=noise_level,
                rng=np.random.default_rng([seed, key, j]),
                quantize=noise,
            )
            samples.append({**make_item(blurry, sharp, radius), "name": name, "level": float(level)})
    return samples
