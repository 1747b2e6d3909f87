"""MobileNetV2 (Sandler et al. 2018) with torchvision's state-dict layout.

Keys: ``features.0`` (stem ConvBNAct), ``features.1`` ... ``features.17`` (inverted residuals),
``features.18`` (1x1 ConvBNAct to the last channel), ``classifier.1`` (Linear; ``classifier.0``
is Dropout). At width 1.0, 3 input channels and 1000 classes it has torchvision's 3,504,872
parameters and its exact key names and shapes.

Small inputs (image_size < 64, e.g. 32x32 CIFAR / padded Fashion-MNIST): torchvision downsamples
by 32, which leaves a 1x1 feature map at 32 px. The CIFAR-style variant runs the stem conv at
stride 1 instead of 2, so the total stride is 16 and a 32 px input ends in a 2x2 map (28 px: 2x2).
Parameter shapes are unchanged; only that one stride differs. Dropping the next stride-2 step too
(total stride 8, 4x4 maps) was measured at about 2x the CPU time of a training step, too slow for
the default 2-core experiment.
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import SMALL_INPUT, ConvBNAct, InvertedResidual, init_weights, make_divisible

# t (expansion), c (output channels), n (repeats), s (stride of the first repeat)
SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(nn.Module):
    """MobileNetV2 with width multiplier ``width``; a stride-1 stem below 64 px."""

    def __init__(
        self,
        num_classes: int = 1000,
        width: float = 1.0,
        in_channels: int = 3,
        image_size: int = 224,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        stem_stride = 1 if image_size < SMALL_INPUT else 2
        channels = make_divisible(32 * width)
        self.last_channel = make_divisible(1280 * max(1.0, width))
        features: list[nn.Module] = [ConvBNAct(in_channels, channels, stride=stem_stride)]
        for t, c, n, s in SETTING:
            out_channels = make_divisible(c * width)
            for i in range(n):
                features.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t))
                channels = out_channels
        features.append(ConvBNAct(channels, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes)
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
