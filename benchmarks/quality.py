"""Quality columns: fidelity to the PyTorch FP32 output, restoration against ground truth.

Metrics are ``training.metrics`` (RGB [0, 1], PSNR 10 log10(1 / MSE), scikit-image SSIM
with ``data_range=1, channel_axis=-1``), computed in the parent from saved ``.npy``.
"""
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from training.metrics import psnr, ssim

VALIDATION_FILE = "validation.npz"


def compare(output: np.ndarray, reference: np.ndarray) -> dict:
    """PSNR (dB, ``inf`` when identical) and SSIM of two (H, W, 3) [0, 1] images."""
    if output.shape != reference.shape:
        raise ValueError(f"output {output.shape} and reference {reference.shape} differ in shape")
    return {"psnr_db": psnr(output, reference), "ssim": ssim(output, reference)}


def mean_scores(images: np.ndarray, sharp: np.ndarray) -> dict:
    """Mean PSNR / SSIM of (N, H, W, 3) images against (N, H, W, 3) ground truth."""
    scores = [compare(a, b) for a, b in zip(images, sharp)]
    return {key: float(np.mean([s[key] for s in scores])) for key in ("psnr_db", "ssim")}


def write_validation(folder: Path, count: int, size: int = 256,
                     seed: int = 0) -> Tuple[Optional[Path], str]:
    """Save ``count`` rendered validation images as ``validation.npz`` (blurry, sharp).

    Returns:
        (the file, a description) or (None, why there are none).
    """
    if count <= 0:
        return None, "not asked for (--quality-images 0)"
    try:
        from training.data import build_validation_set
    except ImportError as exc:
        return None, f"training.data.build_validation_set is not available ({exc})"
    try:
        items = build_validation_set(seed=seed, size=size)
    except Exception as exc:  # a data problem costs the quality columns, not the run
        return None, f"build_validation_set failed: {type(exc).__name__}: {exc}".splitlines()[0]
    if not items:
        return None, "the validation set is empty"
    # Evenly spread picks keep every scene and blur level represented.
    picks = sorted({round(i) for i in np.linspace(0, len(items) - 1, min(count, len(items)))})
    items = [items[i] for i in picks]
    path = Path(folder) / VALIDATION_FILE
    np.savez(path, blurry=np.stack([_hwc(i["blurry"]) for i in items]),
             sharp=np.stack([_hwc(i["sharp"]) for i in items]))
    names = ", ".join(f"{i['name']} ({i['level']:g} px)" for i in items)
    return path, (f"{len(items)} rendered held-out images ({size}x{size}, seed {seed}; largest blur "
                  f"radius in brackets): {names}")


def _hwc(image) -> np.ndarray:
    """A (3, H, W) tensor or array -> (H, W, 3) float32 array."""
    return np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(1, 2, 0))
