"""Defocus map estimation network (DID-ANet's DME branch)."""
from typing import List

import torch.nn.functional as F
from torch import Tensor, nn

from training.archs.blocks import ResBlock, conv3x3


def dme_dilations(num_blocks: int, dilated_blocks: int) -> List[int]:
    """Dilation of each residual block: ``num_blocks`` of 1, then 2, 4, 8, ..."""
    return [1] * num_blocks + [2 ** (i + 1) for i in range(dilated_blocks)]


class DefocusMapEstimator(nn.Module):
    """Blurry image -> defocus map, DID-ANet's design.

    conv 3->C, ``num_blocks`` residual blocks (conv-ReLU-conv + skip), conv C->C,
    conv C->1, linear output. With ``scale`` = 1 this is DID-ANet's branch exactly
    (334,721 parameters at C=64, 4 blocks). With ``scale`` = 2 the image is first
    rearranged by ``pixel_unshuffle`` into 12 channels at half resolution and the
    last conv emits 4 channels that ``pixel_shuffle`` puts back: a quarter of the
    cost per pixel and twice the receptive field, which CPU deployment needs.

    ``dilated_blocks`` residual blocks with dilation 2, 4, 8, ... follow the plain
    ones. They widen the receptive field cheaply: blur cannot be seen inside a flat
    region, only at the edges around it, so the map there needs that context.

    The map is the circle-of-confusion radius in pixels divided by
    ``training.presets.MAP_RADIUS_SCALE_PX`` (0 = in focus). It is not clamped.

    Args:
        channels: Feature channels C. Default: 64.
        num_blocks: Residual blocks. Default: 4.
        scale: Space-to-depth factor; H and W must be multiples of it. Default: 1.
        dilated_blocks: Dilated residual blocks after the plain ones. Default: 0.

    Shape:
        image (N, 3, H, W) in [0, 1] -> map (N, 1, H, W).
    """

    def __init__(self, channels: int = 64, num_blocks: int = 4, scale: int = 1,
                 dilated_blocks: int = 0):
        super().__init__()
        self.scale = scale
        self.conv_first = conv3x3(3 * scale * scale, channels)
        self.body = nn.Sequential(*[ResBlock(channels, d)
                                    for d in dme_dilations(num_blocks, dilated_blocks)])
        self.conv_body = conv3x3(channels, channels)
        self.conv_last = conv3x3(channels, scale * scale, scale=0.1)

    def forward(self, image: Tensor) -> Tensor:
        x = F.pixel_unshuffle(image, self.scale) if self.scale > 1 else image
        x = self.conv_body(self.body(self.conv_first(x)))
        x = self.conv_last(x)
        return F.pixel_shuffle(x, self.scale) if self.scale > 1 else x
