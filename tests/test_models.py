"""Model zoo: torchvision key layout and sizes, forward order, activation modules, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from common.models import MODEL_NAMES, build_model

# (key, shape) pairs copied from torchvision's mobilenet_v2() / resnet18() / resnet34() state dicts
TORCHVISION_KEYS = {
    "mobilenetv2": [
        ("features.0.0.weight", (32, 3, 3, 3)),
        ("features.0.1.running_var", (32,)),
        ("features.1.conv.0.0.weight", (32, 1, 3, 3)),
        ("features.1.conv.1.weight", (16, 32, 1, 1)),
        ("features.1.conv.2.bias", (16,)),
        ("features.2.conv.0.0.weight", (96, 16, 1, 1)),
        ("features.2.conv.1.0.weight", (96, 1, 3, 3)),
        ("features.2.conv.2.weight", (24, 96, 1, 1)),
        ("features.2.conv.3.num_batches_tracked", ()),
        ("features.17.conv.2.weight", (320, 960, 1, 1)),
        ("features.18.0.weight", (1280, 320, 1, 1)),
        ("features.18.1.weight", (1280,)),
        ("classifier.1.weight", (1000, 1280)),
        ("classifier.1.bias", (1000,)),
    ],
    "resnet18": [
        ("conv1.weight", (64, 3, 7, 7)),
        ("bn1.running_mean", (64,)),
        ("layer1.0.conv1.weight", (64, 64, 3, 3)),
        ("layer1.1.bn2.bias", (64,)),
        ("layer2.0.conv1.weight", (128, 64, 3, 3)),
        ("layer2.0.downsample.0.weight", (128, 64, 1, 1)),
        ("layer2.0.downsample.1.running_var", (128,)),
        ("layer4.1.conv2.weight", (512, 512, 3, 3)),
        ("fc.weight", (1000, 512)),
        ("fc.bias", (1000,)),
    ],
    "resnet34": [
        ("layer1.2.conv2.weight", (64, 64, 3, 3)),
        ("layer3.5.bn2.weight", (256,)),
        ("layer4.0.downsample.0.weight", (512, 256, 1, 1)),
        ("layer4.2.conv1.weight", (512, 512, 3, 3)),
        ("fc.weight", (1000, 512)),
    ],
}
# len(state_dict()) and parameter count of the torchvision models
TORCHVISION_SIZES = {
    "mobilenetv2": (314, 3_504_872),
    "resnet18": (122, 11_689_512),
    "resnet34": (218, 21_797_672),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_SIZES))
def test_torchvision_layout(name: str) -> None:
    model = build_model(name, num_classes=1000, in_channels=3, image_size=224, width=1.0)
    state = model.state_dict()
    num_keys, num_params = TORCHVISION_SIZES[name]
    assert len(state) == num_keys
    assert sum(p.numel() for p in model.parameters()) == num_params
    for key, shape in TORCHVISION_KEYS[name]:
        assert tuple(state[key].shape) == shape, key


@pytest.mark.parametrize(
    ("name", "image_size", "feature_side"),
    [("mobilenetv2", 32, 2), ("mobilenetv2", 28, 2), ("mobilenetv2", 64, 2), ("resnet18", 32, 4)],
)
def test_small_inputs_keep_a_spatial_map(name: str, image_size: int, feature_side: int) -> None:
    model = build_model(name, in_channels=1, image_size=image_size).eval()
    trunk = model.features if name == "mobilenetv2" else nn.Sequential(*list(model.children())[:-2])
    with torch.no_grad():
        out = trunk(torch.zeros(1, 1, image_size, image_size))
    assert out.shape[-2:] == (feature_side, feature_side)


def test_small_stem_changes_no_key() -> None:
    small = build_model("resnet18", in_channels=3, image_size=32).state_dict()
    large = build_model("resnet18", in_channels=3, image_size=224).state_dict()
    assert list(small) == list(large)
    assert small["conv1.weight"].shape[-1] == 3 and large["conv1.weight"].shape[-1] == 7


class _ActivationOps(TorchDispatchMode):
    """Counts the aten relu/hardtanh (ReLU6) calls of a forward."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__.rstrip("_") in ("relu", "hardtanh"):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_order_and_activation_modules(name: str, in_channels: int) -> None:
    """Conv2d/Linear run in registration order; every activation op comes from a module."""
    model = build_model(name, num_classes=7, in_channels=in_channels, image_size=32)
    registered = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    called: list[nn.Module] = []
    activation_calls = 0

    def record(module: nn.Module, _inputs: object, _output: object) -> None:
        nonlocal activation_calls
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            activation_calls += 1
        else:
            called.append(module)

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.ReLU, nn.ReLU6)):
            module.register_forward_hook(record)
    ops = _ActivationOps()
    with ops:
        out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, 7)
    assert called == registered
    assert activation_calls == ops.count > 0
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "vgg"}, "name"),
        ({"name": "smallcnn", "num_classes": 0}, "num_classes"),
        ({"name": "smallcnn", "in_channels": 0}, "in_channels"),
        ({"name": "smallcnn", "image_size": 16}, "image_size"),
        ({"name": "smallcnn", "width": 0.0}, "width"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_model(**kwargs)
