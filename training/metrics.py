"""Image and defocus-map metrics, in the conventions of defocus benchmarks.

RGB in [0, 1]; PSNR = 10 log10(1 / MSE) with no border crop (the one PSNR of the
project: training, the export gates, benchmarks and tests); SSIM is
``skimage.metrics.structural_similarity(data_range=1, channel_axis=-1)``
(7x7 uniform window, scikit-image's default, not BasicSR's 11x11 Gaussian).
"""

import math
from typing import Optional

import numpy as np
from skimage.metrics import structural_similarity


def psnr(image: np.ndarray, reference: np.ndarray, data_range: Optional[float] = 1.0) -> float:
    """PSNR in dB, ``10 log10(data_range ** 2 / MSE)`` in float64; ``inf`` when identical.

    Args:
        image, reference: Arrays of one shape (any dtype).
        data_range: The peak. Default 1.0 (images in [0, 1]). None: the reference's own
            range ``max - min`` (at least 1e-12), for defocus maps and condition vectors.
    """
    image = np.asarray(image, np.float64)
    reference = np.asarray(reference, np.float64)
    if data_range is None:
        data_range = max(float(reference.max() - reference.min()), 1e-12)
    mse = float(np.mean((image - reference) ** 2))
    return math.inf if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two H x W x 3 images in [0, 1]."""
    return float(structural_similarity(a, b, data_range=1.0, channel_axis=-1))
