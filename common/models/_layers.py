"""Building blocks shared by the models: conv-BN-activation, the inverted residual block and
the inverted-residual network that MobileNetV2 and MCUNet configure.

Both register their submodules in forward execution order and use ``nn.BatchNorm2d`` and
activation *modules* (never ``F.relu``), so ``common.compression.wrap_last_layers`` can find the
last Conv2d/Linear layers by registration order and swap activations or norms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

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


class InvertedResidualNet(nn.Module):
    """Stem ConvBNAct -> inverted-residual stages -> [1x1 head ConvBNAct] -> pool -> Linear.

    A subclass gives ``STEM`` (stem channels), ``SETTING`` (stages: t expansion, c output
    channels, n repeats, s stride of the first repeat, k depthwise kernel) and ``HEAD`` (1x1 head
    channels, ``None``: no head). Channel counts become make_divisible(c * width); the head is
    make_divisible(HEAD * max(1, width)), never narrower than HEAD (torchvision's rule). The stem
    runs at stride 1 below ``SMALL_INPUT`` px, else 2. Keys: ``features.0`` stem,
    ``features.1..`` blocks then the head, ``classifier.0`` Dropout, ``classifier.1`` Linear.
    """

    STEM: ClassVar[int]
    SETTING: ClassVar[Sequence[tuple[int, int, int, int, int]]]
    HEAD: ClassVar[int | None] = None

    def __init__(
        self,
        num_classes: int = 1000,
        width: float = 1.0,
        in_channels: int = 3,
        image_size: int = 224,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        channels = make_divisible(self.STEM * width)
        features: list[nn.Module] = [
            ConvBNAct(in_channels, channels, stride=1 if image_size < SMALL_INPUT else 2)
        ]
        for t, c, n, s, k in self.SETTING:
            out_channels = make_divisible(c * width)
            for i in range(n):
                features.append(
                    InvertedResidual(channels, out_channels, s if i == 0 else 1, t, k)
                )
                channels = out_channels
        if self.HEAD is not None:
            head = make_divisible(self.HEAD * max(1.0, width))
            features.append(ConvBNAct(channels, head, kernel_size=1))
            channels = head
        self.last_channel = channels
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


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
