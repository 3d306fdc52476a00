"""Regenerate the bundled demo inputs: held-out photos (never trained on) rendered
with synthetic depth and defocus blur.

    python samples/make_samples.py
"""

from pathlib import Path

import cv2
import numpy as np

from training.data import render_defocus, sample_camera, synthetic_depth
from training.data.sources import skimage_photo

HERE = Path(__file__).parent

for name, max_radius_px in [("astronaut", 6.0), ("coffee", 8.0)]:
    rng = np.random.default_rng(7)
    sharp = skimage_photo(name).image
    depth = synthetic_depth(rng, sharp)
    blurry, _ = render_defocus(sharp, depth, sample_camera(rng, depth, max_radius_px), rng=rng)
    out = (np.clip(blurry, 0, 1) * 255).round().astype(np.uint8)
    cv2.imwrite(str(HERE / f"{name}_blurry.png"), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
