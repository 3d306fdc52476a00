"""Smooth random offsets for the estimated map that the deblurring net trains on.

On photos it never saw, the estimator errs more than on its training crops (run 16:
L_dme about 0.055 on its training crops, map MAE 0.085 on the held-out photos), and
its errors are smooth and spatial (too low under strong blur, too high next to it).
A restorer trained only on the training-crop estimate learns to trust the map more
than an unseen photo's map deserves. Adding these offsets to the estimate it reads
teaches it how much to trust the map; the map loss still sees the estimate itself.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

#: Side of the coarse grid of white noise that is upsampled into one offset field.
GRID_CELLS = 8


def smooth_offsets(shape: tuple, sigma_max: float, generator: torch.Generator) -> Tensor:
    """Random fields to add to a batch of maps.

    White noise on a ``GRID_CELLS`` x ``GRID_CELLS`` grid per crop, upsampled
    bicubically, scaled to unit std, then multiplied by a per-crop std drawn
    uniformly from [0, ``sigma_max``] (some crops keep nearly their estimate).

    Args:
        shape: (N, 1, H, W) of the maps.
        sigma_max: the largest per-crop std, in map units (radius px / 10).
        generator: a CPU generator: the fields depend on it alone.

    Returns:
        (N, 1, H, W) float32 on the CPU.
    """
    n, channels, height, width = shape
    coarse = torch.randn((n, channels, GRID_CELLS, GRID_CELLS), generator=generator)
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    field = field / field.flatten(1).std(dim=1).clamp_min(1e-6).view(n, 1, 1, 1)
    sigma = torch.rand((n, 1, 1, 1), generator=generator) * sigma_max
    return field * sigma
