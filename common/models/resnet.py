"""ResNet-18/34 (He et al. 2016) with torchvision's state-dict layout.

Keys: ``conv1``, ``bn1``, ``layer{1..4}.{i}.conv1/bn1/conv2/bn2`` and ``.downsample.0/1`` where
a block changes stride or width, ``fc``. At width 1.0, 3 input channels and 1000 classes the
parameter counts are torchvision's: 11,689,512 (ResNet-18) and 21,797,672 (ResNet-34).

Differences that do not touch the state dict: each block has a second ReLU module
(``relu_out``, after the residual sum) instead of reusing ``relu``, so every activation module
is used once and registered in forward order. Small inputs (image_size < 64): the CIFAR stem,
a 3x3 stride-1 ``conv1`` and no max-pool (``maxpool`` is an ``nn.Identity``), so the total stride
is 8 instead of 32 and a 32 px input ends in a 4x4 map; only ``conv1.weight``'s kernel changes
(3x3 instead of 7x7).
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import SMALL_INPUT, make_divisible

BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
    """y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), shortcut a 1x1 conv + BN or x."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu_out = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu_out(out + shortcut)


class ResNet(nn.Module):
    """ResNet with BasicBlocks; ``blocks`` gives the number of blocks in each of the 4 stages."""

    def __init__(
        self,
        blocks: tuple[int, int, int, int],
        num_classes: int = 1000,
        width: float = 1.0,
        in_channels: int = 3,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        channels = [make_divisible(c * width) for c in (64, 128, 256, 512)]
        if image_size < SMALL_INPUT:
            self.conv1 = _conv3x3(in_channels, channels[0])
        else:
            self.conv1 = nn.Conv2d(in_channels, channels[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        if image_size < SMALL_INPUT:
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        previous = channels[0]
        for stage, (count, out_channels) in enumerate(zip(blocks, channels, strict=True)):
            stride = 1 if stage == 0 else 2
            layer = [BasicBlock(previous, out_channels, stride)]
            layer += [BasicBlock(out_channels, out_channels) for _ in range(count - 1)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
            previous = out_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(previous, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
