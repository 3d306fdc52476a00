"""Defocus map estimation network (DID-ANet's DME branch)."""

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.archs.blocks import ResBlock, conv1x1, conv3x3
from training.presets import MAP_MAX


def clamp_map(x: Tensor, high: float = MAP_MAX, straight_through: bool = False) -> Tensor:
    """Clamp a map to the trained range [0, ``high``].

    With ``straight_through`` the value is clamped but the gradient passes as if it
    were not (Bengio et al.'s estimator): a pixel that lies below 0 while its target
    is above still learns its way back, which a plain clamp's zero gradient forbids.
    The exported graph sees the plain clamp (one ``Clip``), the same values.
    """
    clamped = x.clamp(0.0, high)
    return x + (clamped - x).detach() if straight_through else clamped


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

    With ``full_channels`` > 0 (and ``scale`` > 1) a full-resolution stage runs
    first: conv 3->Cf, ReLU, conv Cf->Cf, ReLU, then ``pixel_unshuffle`` and a 1x1
    conv Cf*scale^2->C whose output is added to the first conv's. Radii of 0.5-2 px
    differ only in the finest frequencies, which the half-resolution cells see
    through one linear conv; this stage gives them nonlinear detectors of their own.

    ``dilated_blocks`` residual blocks with dilation 2, 4, 8, ... follow the plain
    ones. They widen the receptive field cheaply: blur cannot be seen inside a flat
    region, only at the edges around it, so the map there needs that context.

    The map is the circle-of-confusion radius in pixels divided by
    ``training.presets.MAP_RADIUS_SCALE_PX`` (0 = in focus), clamped to the trained
    range [0, ``MAP_MAX``] so that no input, flipped or not, gets a map outside it.

    Args:
        channels: Feature channels C. Default: 64.
        num_blocks: Residual blocks. Default: 4.
        scale: Space-to-depth factor; H and W must be multiples of it. Default: 1.
        dilated_blocks: Dilated residual blocks after the plain ones. Default: 0.
        full_channels: Channels Cf of the full-resolution stage; 0 = none. Default: 0.

    Shape:
        image (N, 3, H, W) in [0, 1] -> map (N, 1, H, W) in [0, MAP_MAX].
    """

    def __init__(
        self,
        channels: int = 64,
        num_blocks: int = 4,
        scale: int = 1,
        dilated_blocks: int = 0,
        full_channels: int = 0,
    ):
        super().__init__()
        if full_channels and scale == 1:
            raise ValueError("a full-resolution stage needs scale > 1: at scale 1 every stage is")
        self.scale = scale
        self.conv_first = conv3x3(3 * scale * scale, channels)
        self.full = None
        if full_channels:
            self.full = nn.Sequential(
                conv3x3(3, full_channels),
                nn.ReLU(inplace=True),
                conv3x3(full_channels, full_channels),
                nn.ReLU(inplace=True),
                nn.PixelUnshuffle(scale),
                conv1x1(full_channels * scale * scale, channels, scale=0.1),
            )
        self.body = nn.Sequential(*[ResBlock(channels, d) for d in dme_dilations(num_blocks, dilated_blocks)])
        self.conv_body = conv3x3(channels, channels)
        self.conv_last = conv3x3(channels, scale * scale, scale=0.1)

    def forward(self, image: Tensor) -> Tensor:
        x = self.conv_first(F.pixel_unshuffle(image, self.scale) if self.scale > 1 else image)
        if self.full is not None:
            x = x + self.full(image)
        x = self.conv_body(self.body(x))
        x = self.conv_last(x)
        x = F.pixel_shuffle(x, self.scale) if self.scale > 1 else x
        return clamp_map(x, straight_through=self.training and torch.is_grad_enabled())
