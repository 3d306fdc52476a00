"""Condition network: defocus map -> condition features for the SFT layers."""

import torch.nn.functional as F
from torch import Tensor, nn

from training.archs.blocks import conv1x1


class ConditionNet(nn.Module):
    """Three convolutions that encode the defocus map (paper Sec. 3.2).

    All three are 1x1 (as in SFTGAN's condition network): each condition vector
    is a function of the map inside one ``scale`` x ``scale`` cell only. The map
    already carries the DME's spatial context, and a point-wise encoder makes the
    global mean of the condition features additive over any tiling aligned to
    ``scale``, which is what lets the runtime tile large images exactly.

    Args:
        cond_channels: Condition channels Cc. Default: 32.
        scale: Space-to-depth factor of the deblurring net. Default: 1.

    Shape:
        map (N, 1, H, W) -> cond (N, Cc, H / scale, W / scale).
    """

    def __init__(self, cond_channels: int = 32, scale: int = 1):
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(
            conv1x1(scale * scale, cond_channels),
            nn.LeakyReLU(0.1, inplace=True),
            conv1x1(cond_channels, cond_channels),
            nn.LeakyReLU(0.1, inplace=True),
            conv1x1(cond_channels, cond_channels),
        )

    def forward(self, defocus_map: Tensor) -> Tensor:
        x = F.pixel_unshuffle(defocus_map, self.scale) if self.scale > 1 else defocus_map
        return self.body(x)
