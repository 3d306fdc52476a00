"""Defocus deblurring network of conditioned residual blocks."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.archs.blocks import ResBlock, conv3x3
from training.archs.sft_arch import ConditionedResBlock

VARIANTS = ("concat", "sft", "sft_dec", "sft_fdec")
_SFT_MODE = {"sft": "full", "sft_dec": "dec", "sft_fdec": "fdec"}


class DeblurNet(nn.Module):
    """Blurry image (+ defocus condition) -> the residual that makes it sharp.

    ``pixel_unshuffle(scale)`` -> conv3x3 -> blocks -> conv3x3 (+ long skip) ->
    conv3x3 -> ``pixel_shuffle(scale)``; ``DefocusDeblurNet.restore`` adds the result
    to the input image (the global skip). The blocks are:

    - ``concat`` (the paper's baseline, DID-ANet's design): the defocus map is
      concatenated to the image at the input; plain residual blocks, no SFT.
    - ``sft``, ``sft_dec``, ``sft_fdec``: conditioned residual blocks whose SFT
      layers use ``full``, ``dec`` and ``fdec`` modulation (see ``SFTLayer``); one
      condition tensor is shared by every block, as in SFTGAN.

    Args:
        channels: Feature channels C. Default: 128.
        cond_channels: Condition channels Cc (unused by ``concat``). Default: 32.
        num_blocks: Residual blocks. Default: 16.
        variant: One of ``VARIANTS``. Default: ``sft_dec``.
        scale: Space-to-depth factor; H and W must be multiples of it. Default: 1.

    Shape:
        image (N, 3, H, W); for ``concat`` the map (N, 1, H, W), else cond
        (N, Cc, H / scale, W / scale) and, for the decomposed variants, pooled
        (N, Cc, 1, 1) -> residual (N, 3, H, W).
    """

    def __init__(
        self,
        channels: int = 128,
        cond_channels: int = 32,
        num_blocks: int = 16,
        variant: str = "sft_dec",
        scale: int = 1,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.scale = scale
        in_channels = (4 if variant == "concat" else 3) * scale * scale
        self.conv_first = conv3x3(in_channels, channels)
        if variant == "concat":
            self.blocks = nn.ModuleList(ResBlock(channels) for _ in range(num_blocks))
        else:
            self.blocks = nn.ModuleList(
                ConditionedResBlock(channels, cond_channels, _SFT_MODE[variant]) for _ in range(num_blocks)
            )
        self.conv_body = conv3x3(channels, channels, scale=0.1)
        self.conv_last = conv3x3(channels, 3 * scale * scale, scale=0.1)

    def _unshuffle(self, x: Tensor) -> Tensor:
        return F.pixel_unshuffle(x, self.scale) if self.scale > 1 else x

    def forward(self, image: Tensor, cond: Tensor, pooled: Optional[Tensor] = None) -> Tensor:
        """The residual the net adds to ``image`` (``DefocusDeblurNet.restore`` adds it,
        through the focus gate where there is one): (N, 3, H, W)."""
        if self.variant == "concat":
            fea = self.conv_first(self._unshuffle(torch.cat([image, cond], dim=1)))
            trunk = fea
            for block in self.blocks:
                trunk = block(trunk)
        else:
            fea = self.conv_first(self._unshuffle(image))
            trunk = fea
            for block in self.blocks:
                trunk = block(trunk, cond, pooled)
        out = self.conv_last(fea + self.conv_body(trunk))
        if self.scale > 1:
            out = F.pixel_shuffle(out, self.scale)
        return out
