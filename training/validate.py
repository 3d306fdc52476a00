"""Validation on rendered images that training never sees."""

import json
from pathlib import Path

import numpy as np
import torch

from common.atomic import atomic_write
from training.config import DataSection
from training.data import build_validation_set
from training.metrics import psnr, ssim


def load_validation_set(data: DataSection) -> list:
    """Held-out photos and dead-leaves images at several blur levels (fixed seed)."""
    return build_validation_set(seed=0, size=data.val_size)


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()


@torch.no_grad()
def evaluate(model, samples: list, device: torch.device) -> dict:
    """Mean PSNR/SSIM of the blurry input and of the output, MAE/MSE of the map, and
    ``psnr_true_map``: the PSNR of the output restored from the ground-truth map
    instead of the estimate. Its gap to ``psnr_out`` is what the map estimator costs.

    Returns the overall means and, under ``levels``, the means per blur level.
    """
    model.eval()
    rows = []
    for sample in samples:
        blurry = torch.as_tensor(sample["blurry"])[None].to(device)
        true_map = torch.as_tensor(sample["defocus_map"])
        deblurred, estimated = model(blurry)
        from_true_map = model.restore(blurry, true_map[None].to(device))
        sharp, inp, out = _hwc(torch.as_tensor(sample["sharp"])), _hwc(blurry[0]), _hwc(deblurred[0])
        err = estimated[0].float().cpu() - true_map
        rows.append(
            {
                "level": float(sample["level"]),
                "psnr_in": psnr(inp, sharp),
                "psnr_out": psnr(out, sharp),
                "ssim_in": ssim(inp, sharp),
                "ssim_out": ssim(out, sharp),
                "map_mae": float(err.abs().mean()),
                "map_mse": float((err**2).mean()),
                "psnr_true_map": psnr(_hwc(from_true_map[0]), sharp),
            }
        )
    keys = [k for k in rows[0] if k != "level"]
    metrics = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    metrics["images"] = len(rows)
    metrics["levels"] = {
        str(level): {k: float(np.mean([r[k] for r in rows if r["level"] == level])) for k in keys}
        for level in sorted({r["level"] for r in rows})
    }
    return metrics


def write_metrics(folder: Path, model, step: int, seconds: float, weights: str) -> None:
    """``folder/metrics.json`` of a checkpoint written outside a run (``training.average``,
    ``training.set_gate``): the step, the training time, which weights these are and the
    model's built-in validation (``evaluate``, on the CPU)."""
    info = {
        "step": step,
        "training_seconds": round(seconds, 1),
        "weights": weights,
        "validation": evaluate(model, load_validation_set(DataSection()), torch.device("cpu")),
    }
    atomic_write(Path(folder) / "metrics.json", lambda p: Path(p).write_text(json.dumps(info, indent=2)))
