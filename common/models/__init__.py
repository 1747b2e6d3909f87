"""Model zoo: ``build_model(name, ...)`` for the architectures the experiments fine-tune.

Every model registers its modules in forward execution order and uses ``nn.BatchNorm2d`` and
activation modules (``nn.ReLU``/``nn.ReLU6``), which ``common.compression.wrap_last_layers``
relies on. MobileNetV2 and ResNet-18/34 keep torchvision's state-dict keys (and, at width 1.0
with 3 channels at >= 64 px, its shapes). ``width`` multiplies every channel count (rounded to
a multiple of 8). Inputs below 64 px get a CIFAR-style stride-1 stem (see each module).
"""

from __future__ import annotations

from torch import nn

from .mcunet import MCUNet
from .mobilenetv2 import MobileNetV2
from .resnet import BLOCKS, ResNet
from .smallcnn import SmallCNN

MODEL_NAMES = ("mobilenetv2", "resnet18", "resnet34", "mcunet", "smallcnn")
MIN_IMAGE_SIZE = 28


def build_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 32,
    width: float = 0.5,
) -> nn.Module:
    """Build an untrained ``name`` model for ``in_channels`` x ``image_size``^2 inputs.

    Raises ``ValueError`` naming the offending argument.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"name: unknown model {name!r}, expected one of {', '.join(MODEL_NAMES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes: must be at least 1, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels: must be at least 1, got {in_channels}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size: must be at least {MIN_IMAGE_SIZE} px, got {image_size}")
    if width <= 0:
        raise ValueError(f"width: must be positive, got {width}")
    if name == "mobilenetv2":
        return MobileNetV2(num_classes, width, in_channels, image_size)
    if name == "mcunet":
        return MCUNet(num_classes, width, in_channels, image_size)
    if name == "smallcnn":
        return SmallCNN(num_classes, width, in_channels)
    return ResNet(BLOCKS[name], num_classes, width, in_channels, image_size)


__all__ = ["MODEL_NAMES", "build_model"]
