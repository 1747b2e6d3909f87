"""A small plain CNN: three conv-BN-ReLU-maxpool stages, global average pooling and a two-layer
classifier (Linear-ReLU-Linear), so the last layers mix Linear and Conv2d.

Layout: ``features.{0,2,4}`` ConvBNAct (``features.{1,3,5}`` max-pools), ``classifier.0`` and
``classifier.2`` Linear.
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import ConvBNAct, init_weights, make_divisible


class SmallCNN(nn.Module):
    """Channels (64, 128, 256) x ``width``; the hidden Linear is as wide as the last conv."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 1) -> None:
        super().__init__()
        widths = [make_divisible(c * width) for c in (64, 128, 256)]
        features: list[nn.Module] = []
        previous = in_channels
        for channels in widths:
            features += [ConvBNAct(previous, channels, activation=nn.ReLU), nn.MaxPool2d(2)]
            previous = channels
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(previous, previous), nn.ReLU(inplace=True), nn.Linear(previous, num_classes)
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
