"""The frozen-prefix feature cache is exact: the suffix on cached features gives the whole
model's logits and trainable gradients, cuts fall on whole blocks, and a model without a cut
runs whole."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.compression import trainable_layers, wrap_last_layers
from common.featurecache import FeatureCache, split, stages
from common.memory import measure
from common.models import MODEL_NAMES, build_model
from common.train import batchnorm_eval, sgd

TOLERANCE = 1e-5


def _calibrated(name: str, width: float = 0.5) -> nn.Module:
    """A seeded model whose BatchNorm statistics come from a few training-mode batches, so the
    eval-mode layers are not the identity."""
    torch.manual_seed(0)
    model = build_model(name, 10, 1, 32, width)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 32, 32))
    return model.eval()


@pytest.fixture(scope="module")
def reference() -> nn.Module:
    return _calibrated("mobilenetv2")


@pytest.fixture(scope="module")
def data() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(40, 1, 32, 32, generator=generator),
                         torch.randint(0, 10, (40,), generator=generator))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_stages_compose_to_the_forward(name: str) -> None:
    model = _calibrated(name, 0.25)
    inputs = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        out = inputs
        for stage in stages(model):
            out = stage(out)
        torch.testing.assert_close(out, model(inputs), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(("last_k", "first_suffix_stage"), [
    (1, "classifier.0"), (2, "features.18"), (4, "features.17")])
def test_cut_falls_on_a_whole_block_before_the_first_trainable_layer(
        reference: nn.Module, last_k: int, first_suffix_stage: str) -> None:
    model = wrap_last_layers(copy.deepcopy(reference), "vanilla", last_k)
    parts = split(model)
    names = {module: name for name, module in model.named_modules()}
    assert names[parts.suffix[0]] == first_suffix_stage  # k=1: the Dropout before the Linear
    assert not any(p.requires_grad for p in parts.prefix.parameters())
    assert sum(m.weight.requires_grad for _, m in trainable_layers(parts.suffix)) == last_k


@pytest.mark.parametrize("method", [("vanilla", {}), ("hosvd", {"eps": 0.8})],
                         ids=["vanilla", "hosvd"])
@pytest.mark.parametrize("last_k", [1, 2, 4])
def test_suffix_on_cached_features_matches_the_whole_model(
        reference: nn.Module, data: TensorDataset, last_k: int,
        method: tuple[str, dict]) -> None:
    cache = FeatureCache(reference, data)
    model = batchnorm_eval(wrap_last_layers(copy.deepcopy(reference), method[0], last_k,
                                            **method[1]))
    suffix, features = cache.view(model)
    assert suffix is not model and len(features) == len(data)
    images, targets = data.tensors
    trainable = [p for p in model.parameters() if p.requires_grad]

    def logits_and_grads(module: nn.Module, inputs: torch.Tensor):
        for p in trainable:
            p.grad = None
        torch.manual_seed(3)  # the same Dropout mask in both (the prefix draws nothing)
        logits = module(inputs)
        nn.functional.cross_entropy(logits, targets).backward()
        return logits.detach(), [p.grad.clone() for p in trainable]

    whole, whole_grads = logits_and_grads(model, images)
    cut, cut_grads = logits_and_grads(suffix, features.tensors[0])
    torch.testing.assert_close(cut, whole, atol=TOLERANCE, rtol=0)
    for ours, theirs in zip(cut_grads, whole_grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=TOLERANCE, rtol=0)


def test_all_layers_have_no_cut_and_run_whole(reference: nn.Module,
                                              data: TensorDataset) -> None:
    model = wrap_last_layers(copy.deepcopy(reference), "vanilla",
                             len(trainable_layers(reference)))
    assert split(model) is None
    module, features = FeatureCache(reference, data).view(model)
    assert module is model and features is data


def test_residual_blocks_stay_whole_in_resnet() -> None:
    model = wrap_last_layers(_calibrated("resnet18", 0.25), "vanilla", 2)
    parts = split(model)
    assert parts.suffix[0] is model.layer4[1]  # its conv1 frozen, conv2 trainable
    assert not model.layer4[1].conv1.weight.requires_grad


def test_later_cut_is_derived_from_an_earlier_one(reference: nn.Module,
                                                  data: TensorDataset) -> None:
    derived = FeatureCache(reference, data)
    derived.at(17)
    direct = FeatureCache(reference, data).at(21)
    torch.testing.assert_close(derived.at(21).tensors[0], direct.tensors[0],
                               atol=TOLERANCE, rtol=0)
    assert torch.equal(derived.at(21).tensors[1], data.tensors[1])


def test_a_different_prefix_is_refused(reference: nn.Module, data: TensorDataset) -> None:
    model = wrap_last_layers(copy.deepcopy(reference), "vanilla", 2)
    with torch.no_grad():
        model.features[3].conv[0][0].weight.add_(1.0)
    with pytest.raises(ValueError, match="model: its frozen prefix differs"):
        FeatureCache(reference, data).view(model)


def test_bad_arguments_are_named(reference: nn.Module, data: TensorDataset) -> None:
    with pytest.raises(ValueError, match="cut: must be in"):
        FeatureCache(reference, data).at(len(stages(reference)))
    with pytest.raises(ValueError, match="batch_size: must be at least 1"):
        FeatureCache(reference, data, batch_size=0)
    with pytest.raises(ValueError, match="reference: Linear has no stage list"):
        FeatureCache(nn.Linear(2, 2), data)


def test_memory_of_the_suffix_keeps_what_the_trainable_part_keeps(
        reference: nn.Module, data: TensorDataset) -> None:
    model = batchnorm_eval(wrap_last_layers(copy.deepcopy(reference), "hosvd", 4, eps=0.8))
    suffix, features = FeatureCache(reference, data).view(model)
    images, targets = data.tensors[0][:32], data.tensors[1][:32]
    trainable = [p for p in model.parameters() if p.requires_grad]
    loss = nn.CrossEntropyLoss()
    torch.manual_seed(0)
    whole = measure(model, images, targets, loss, sgd(trainable, 0.01))
    torch.manual_seed(0)
    cut = measure(suffix, features.tensors[0][:32], targets, loss, sgd(trainable, 0.01))
    for field in ("activation_bytes", "compressed_bytes", "grad_bytes", "optimizer_bytes",
                  "trainable_param_bytes"):
        assert getattr(cut, field) == getattr(whole, field), field
    assert cut.activation_bytes > 0
    assert cut.param_bytes < whole.param_bytes
    assert cut.peak_forward_bytes < whole.peak_forward_bytes
