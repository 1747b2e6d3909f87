"""An MCUNet-style tiny network (Lin et al. 2020): a narrow MobileNetV2-like inverted-residual
stack with mixed 3x3/5x5/7x7 depthwise kernels and small expansion ratios, no wide last conv.

This is a fixed hand-picked configuration in the spirit of MCUNet's searched ImageNet/VWW
models (which need TinyNAS output to reproduce exactly): 0.72M parameters at width 1.0 with
1000 classes, 178k at the default width 0.5 with 10 classes.
Layout: ``features.0`` stem ConvBNAct, ``features.1..`` inverted residuals, ``classifier.1``
Linear. Below 64 px the stem runs at stride 1 (total stride 16), as in our MobileNetV2.
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import SMALL_INPUT, ConvBNAct, InvertedResidual, init_weights, make_divisible

# t (expansion), c (output channels), n (repeats), s (first stride), k (depthwise kernel)
SETTING = [
    (1, 8, 1, 1, 3),
    (4, 16, 2, 2, 5),
    (4, 24, 2, 2, 7),
    (4, 40, 3, 2, 5),
    (5, 48, 2, 1, 3),
    (5, 96, 3, 2, 7),
    (6, 160, 1, 1, 5),
]


class MCUNet(nn.Module):
    """Tiny inverted-residual network; ``width`` scales every channel count."""

    def __init__(
        self,
        num_classes: int = 1000,
        width: float = 1.0,
        in_channels: int = 3,
        image_size: int = 224,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        channels = make_divisible(16 * width)
        features: list[nn.Module] = [
            ConvBNAct(in_channels, channels, stride=1 if image_size < SMALL_INPUT else 2)
        ]
        for t, c, n, s, k in SETTING:
            out_channels = make_divisible(c * width)
            for i in range(n):
                features.append(
                    InvertedResidual(channels, out_channels, s if i == 0 else 1, t, k)
                )
                channels = out_channels
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
