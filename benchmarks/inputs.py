"""Image sizes and the deterministic test image every backend gets.

Sizes are written ``WIDTHxHEIGHT`` (``1920x1080`` is landscape full HD).
"""

from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np

#: The last is a 24-megapixel photo (only the tiled paths run it).
DEFAULT_SIZES = ("256x256", "512x512", "1024x1024", "1920x1080", "3840x2160", "6000x4000")
QUICK_SIZES = ("256x256", "512x512")


def parse_size(text: str) -> Tuple[int, int]:
    """``"1920x1080"`` -> (1920, 1080).

    Raises:
        ValueError: Not ``WxH`` with two positive integers.
    """
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT with positive integers (e.g. 1920x1080)")
    return int(parts[0]), int(parts[1])


def parse_sizes(text: str, multiple: int = 1) -> List[Tuple[int, int]]:
    """Comma-separated sizes, checked against the model's size multiple, sorted by pixels.

    Raises:
        ValueError: A bad size, or one that is not a multiple of ``multiple``.
    """
    sizes = [parse_size(s.strip()) for s in text.split(",") if s.strip()]
    if not sizes:
        raise ValueError("no sizes given")
    for w, h in sizes:
        if w % multiple or h % multiple:
            raise ValueError(f"size {w}x{h}: width and height must be multiples of {multiple}")
    return sorted(dict.fromkeys(sizes), key=lambda s: (s[0] * s[1], s))


def size_label(width: int, height: int) -> str:
    return f"{width}x{height}"


def input_path(folder: Path, width: int, height: int) -> Path:
    return Path(folder) / f"input_{size_label(width, height)}.npy"


def synthetic_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A dead-leaves image (random discs, radius ~ r^-3) slightly blurred: (H, W, 3) float32 [0, 1].

    Natural-image-like statistics at every size, without any data file.
    """
    rng = np.random.default_rng(seed)
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = rng.random(3, dtype=np.float32)
    scale = max(width, height)
    count = min(30 * scale, 20000)
    r_min, r_max = max(1.0, scale / 500), scale / 8
    # Inverse CDF of p(r) ~ r^-3 on [r_min, r_max].
    u = rng.random(count)
    radii = 1.0 / np.sqrt(u / r_max**2 + (1 - u) / r_min**2)
    centres = rng.random((count, 2)) * (width, height)
    colours = rng.random((count, 3))
    for (x, y), r, c in zip(centres, radii, colours):
        cv2.circle(canvas, (int(x), int(y)), int(round(r)), tuple(float(v) for v in c), -1, cv2.LINE_AA)
    sigma = max(width, height) / 1024
    return np.clip(cv2.GaussianBlur(canvas, (0, 0), sigma), 0.0, 1.0)


def write_inputs(folder: Path, sizes: List[Tuple[int, int]], seed: int = 0) -> None:
    """Save the test image of every size as ``input_WxH.npy`` in ``folder``."""
    for w, h in sizes:
        np.save(input_path(folder, w, h), synthetic_image(w, h, seed))
