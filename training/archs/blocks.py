"""Building blocks shared by the architectures."""

from torch import Tensor, nn


def init_conv(conv: nn.Conv2d, scale: float = 1.0) -> nn.Conv2d:
    """Kaiming-normal init scaled by ``scale``, zero bias (BasicSR's ``default_init_weights``).

    A ``scale`` of 0.1 on the conv that closes a residual branch makes an untrained
    block close to the identity, which keeps deep residual stacks stable early on.
    """
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    conv.weight.data *= scale
    nn.init.zeros_(conv.bias)
    return conv


def conv3x3(in_ch: int, out_ch: int, scale: float = 1.0, dilation: int = 1) -> nn.Conv2d:
    return init_conv(nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation), scale)


def conv1x1(in_ch: int, out_ch: int, scale: float = 1.0) -> nn.Conv2d:
    return init_conv(nn.Conv2d(in_ch, out_ch, 1), scale)


class ResBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3 plus identity skip (EDSR / DID-ANet style, no BN).

    Args:
        channels: Feature channels C. Input and output are (N, C, H, W).
        dilation: Dilation of both convs; each adds ``2 * dilation`` to the
            receptive field instead of 2. Default: 1.
    """

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.conv1 = conv3x3(channels, channels, dilation=dilation)
        self.conv2 = conv3x3(channels, channels, scale=0.1, dilation=dilation)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))
