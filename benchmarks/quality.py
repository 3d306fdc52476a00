"""Quality columns: fidelity to the PyTorch FP32 output, restoration against ground truth.

Metrics are ``training.metrics`` (RGB [0, 1], PSNR 10 log10(1 / MSE), scikit-image SSIM
with ``data_range=1, channel_axis=-1``), computed in the parent from saved ``.npy``.
"""

from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from benchmarks.prepare import run_step
from training.metrics import psnr, ssim


def compare(output: np.ndarray, reference: np.ndarray) -> dict:
    """PSNR (dB, ``inf`` when identical) and SSIM of two (H, W, 3) [0, 1] images."""
    if output.shape != reference.shape:
        raise ValueError(f"output {output.shape} and reference {reference.shape} differ in shape")
    return {"psnr_db": psnr(output, reference), "ssim": ssim(output, reference)}


def mean_scores(images: np.ndarray, sharp: np.ndarray) -> dict:
    """Mean PSNR / SSIM of (N, H, W, 3) images against (N, H, W, 3) ground truth."""
    scores = [compare(a, b) for a, b in zip(images, sharp)]
    return {key: float(np.mean([s[key] for s in scores])) for key in ("psnr_db", "ssim")}


def write_validation(folder: Path, count: int, size: int = 256, seed: int = 0) -> Tuple[Optional[Path], str]:
    """Save ``count`` rendered validation images as ``validation.npz`` (blurry, sharp), with
    ``benchmarks.prepare validation`` in its own process.

    Returns:
        (the file, a description) or (None, why there are none).
    """
    if count <= 0:
        return None, "not asked for (--quality-images 0)"
    try:
        found = run_step(
            "validation",
            [str(folder), "--count", str(count), "--size", str(size), "--seed", str(seed)],
            folder,
        )
    except ValueError as exc:
        return None, str(exc)
    return (None if found["path"] is None else Path(found["path"])), found["description"]
