"""Spatial feature transform (SFT) layers and the conditioned residual block."""

from typing import Optional

from torch import Tensor, nn

from training.archs.blocks import conv1x1, conv3x3

SFT_MODES = ("full", "dec", "fdec")


def _spatial_head(cond_channels: int, out_channels: int) -> nn.Sequential:
    """SFTGAN's modulation head: conv1x1 - LeakyReLU(0.1) - conv1x1 on the condition."""
    return nn.Sequential(
        conv1x1(cond_channels, cond_channels),
        nn.LeakyReLU(0.1, inplace=True),
        conv1x1(cond_channels, out_channels, scale=0.1),
    )


def _channel_head(cond_channels: int, out_channels: int) -> nn.Sequential:
    """Channel-attention head on pooled condition features: conv1x1 - ReLU - conv1x1."""
    return nn.Sequential(
        conv1x1(cond_channels, cond_channels),
        nn.ReLU(inplace=True),
        conv1x1(cond_channels, out_channels),
    )


class SFTLayer(nn.Module):
    """``SFT(F) = gamma * F + beta`` with gamma and beta generated from the condition.

    Modes (the paper's Table 3):
        ``full``: gamma and beta are (N, C, H, W), each from a 1x1-conv head (SFTGAN).
        ``dec``: gamma = gamma_c * gamma_s, a channel part (N, C, 1, 1) from globally
            pooled condition features and a spatial part (N, 1, H, W); beta is full.
            This is the paper's model.
        ``fdec``: beta is decomposed the same way.

    Choice where the paper is silent: the layer applies ``F * (1 + gamma) + beta``,
    SFTGAN's convention, so "gamma" here is the deviation from identity. An untrained
    layer (heads closed by 0.1-scaled convs) then starts close to the identity map
    instead of scaling features by a random gamma, which keeps 2 x num_blocks
    stacked modulations stable early in training. No sigmoid bounds gamma_c:
    a decomposed product must be able to flip and amplify, as the full SFT can.

    Args:
        channels: Feature channels C.
        cond_channels: Condition channels Cc.
        mode: One of ``SFT_MODES``. Default: ``dec``.

    Shape:
        x (N, C, H, W), cond (N, Cc, H, W), pooled (N, Cc, 1, 1) (needed by ``dec``
        and ``fdec``) -> (N, C, H, W).
    """

    def __init__(self, channels: int, cond_channels: int, mode: str = "dec"):
        super().__init__()
        if mode not in SFT_MODES:
            raise ValueError(f"SFT mode must be one of {SFT_MODES}, got {mode!r}")
        self.mode = mode
        if mode == "full":
            self.gamma = _spatial_head(cond_channels, channels)
        else:
            self.gamma_s = _spatial_head(cond_channels, 1)
            self.gamma_c = _channel_head(cond_channels, channels)
        if mode == "fdec":
            self.beta_s = _spatial_head(cond_channels, 1)
            self.beta_c = _channel_head(cond_channels, channels)
        else:
            self.beta = _spatial_head(cond_channels, channels)

    def forward(self, x: Tensor, cond: Tensor, pooled: Optional[Tensor] = None) -> Tensor:
        if self.mode == "full":
            gamma = self.gamma(cond)
        else:
            gamma = self.gamma_c(pooled) * self.gamma_s(cond)
        if self.mode == "fdec":
            beta = self.beta_c(pooled) * self.beta_s(cond)
        else:
            beta = self.beta(cond)
        return x * (1 + gamma) + beta


class ConditionedResBlock(nn.Module):
    """SFT - conv3x3 - ReLU - SFT - conv3x3, plus identity skip (SFTGAN's ResBlock_SFT).

    Args:
        channels: Feature channels C.
        cond_channels: Condition channels Cc.
        mode: SFT mode, see ``SFTLayer``.

    Shape:
        x (N, C, H, W), cond (N, Cc, H, W), pooled (N, Cc, 1, 1) or None -> (N, C, H, W).
    """

    def __init__(self, channels: int, cond_channels: int, mode: str = "dec"):
        super().__init__()
        self.sft1 = SFTLayer(channels, cond_channels, mode)
        self.conv1 = conv3x3(channels, channels)
        self.sft2 = SFTLayer(channels, cond_channels, mode)
        self.conv2 = conv3x3(channels, channels, scale=0.1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, cond: Tensor, pooled: Optional[Tensor] = None) -> Tensor:
        fea = self.relu(self.conv1(self.sft1(x, cond, pooled)))
        return x + self.conv2(self.sft2(fea, cond, pooled))
