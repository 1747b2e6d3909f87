"""Building blocks shared by the models: conv-BN-activation and the inverted residual block.

Both register their submodules in forward execution order and use ``nn.BatchNorm2d`` and
activation *modules* (never ``F.relu``), so ``common.compression.wrap_last_layers`` can find the
last Conv2d/Linear layers by registration order and swap activations or norms.
"""

from __future__ import annotations

import torch
from torch import nn

# Below this input size (px) the stem keeps full resolution (CIFAR-style), so the last
# feature map is not degenerate.
SMALL_INPUT = 64


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never more than 10% below it.

    The channel rounding rule of MobileNet (torchvision's ``_make_divisible``).
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias, "same" padding) -> BatchNorm2d -> activation; keys ``0``, ``1``, ``2``.

    The layout of torchvision's ``Conv2dNormActivation``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] = nn.ReLU6,
    ) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            activation(inplace=True),
        )
        self.out_channels = out_channels


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (t != 1) -> kxk depthwise -> 1x1 linear projection.

    y = x + F(x) when stride is 1 and the channel count is unchanged, else y = F(x).
    Keys ``conv.0`` ... ``conv.3`` as in torchvision.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: float,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride: must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, kernel_size=1))
        layers += [
            ConvBNAct(hidden, hidden, kernel_size=kernel_size, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


def init_weights(model: nn.Module) -> None:
    """torchvision's initialisation: Kaiming-normal (fan-out) convs, unit BN, N(0, 0.01) linear."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)
