"""Image and defocus-map metrics, in the conventions of defocus benchmarks.

RGB in [0, 1]; PSNR = 10 log10(1 / MSE) with no border crop; SSIM is
``skimage.metrics.structural_similarity(data_range=1, channel_axis=-1)``
(7x7 uniform window, scikit-image's default, not BasicSR's 11x11 Gaussian).
"""
import numpy as np
from skimage.metrics import structural_similarity


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two H x W x 3 images in [0, 1]."""
    return float(structural_similarity(a, b, data_range=1.0, channel_axis=-1))
