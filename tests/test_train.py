"""Training and evaluation loops, Setup-B pretraining with its checkpoint cache, and the
compression settings' wrap parameters."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common import train as T
from common.config import CompressionConfig, ExperimentConfig


def _blobs(n: int = 128, seed: int = 0) -> TensorDataset:
    """Two separable Gaussian blobs in 4-D, labels 0/1."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    points = torch.randn(n, 4, generator=generator) + 3.0 * labels[:, None].float()
    return TensorDataset(points, labels)


def _classifier() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def test_train_learns_and_counts() -> None:
    model, data = _classifier(), _blobs()
    before_loss, _ = T.evaluate(model, data)
    result = T.train(model, data, epochs=3, lr=0.1, batch_size=16)
    assert result.steps == 3 * 8 and result.examples == 3 * 128
    loss, accuracy = T.evaluate(model, data)
    assert loss < before_loss and accuracy > 0.95
    capped = T.train(model, data, epochs=3, max_steps=5, batch_size=16)
    assert capped.steps == 5 and capped.examples == 5 * 16


def test_batchnorm_statistics_frozen_unless_pretraining() -> None:
    model, data = _classifier(), _blobs()
    stats = model[1].running_mean.clone()
    T.train(model, data, max_steps=3)
    assert torch.equal(model[1].running_mean, stats)
    assert model.training and not model[1].training
    T.train(model, data, max_steps=3, freeze_batchnorm=False)
    assert not torch.equal(model[1].running_mean, stats)


def test_cosine_schedule_and_restored_learning_rate() -> None:
    model = _classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.4)
    seen: list[float] = []
    T.train(model, _blobs(64), optimizer, epochs=2, batch_size=16,
            on_step=lambda step, total, loss: seen.append(optimizer.param_groups[0]["lr"]))
    total = 8
    expected = [0.4 * 0.5 * (1 + math.cos(math.pi * t / total)) for t in range(1, total + 1)]
    assert seen == pytest.approx(expected)
    assert optimizer.param_groups[0]["lr"] == 0.4


def test_span_continues_one_cosine_across_calls() -> None:
    model = _classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.4)
    seen: list[float] = []
    record = {"on_step": lambda step, total, loss: seen.append(optimizer.param_groups[0]["lr"])}
    for r in (1, 2):  # two rounds of 4 steps cover one decay of 8 steps
        T.train(model, _blobs(64), optimizer, batch_size=16, span=T.round_span(
            "across-rounds", r, 2), **record)
    steps = [0.4 * 0.5 * (1 + math.cos(math.pi * t / 8)) for t in (1, 2, 3, 4)]
    later = [0.4 * 0.5 * (1 + math.cos(math.pi * (0.5 + t / 8))) for t in (1, 2, 3, 4)]
    assert seen == pytest.approx(steps + later)
    assert T.round_span("per-round", 3, 5) == (0.0, 1.0)
    assert T.round_span("across-rounds", 3, 5) == (0.4, 0.6)
    with pytest.raises(ValueError, match="server_round"):
        T.round_span("across-rounds", 6, 5)
    with pytest.raises(ValueError, match="span"):
        T.train(model, _blobs(), span=(0.5, 0.2))


def test_log_prior_is_the_smoothed_class_prior() -> None:
    prior = T.log_prior(torch.tensor([0, 0, 0, 2]), 3).exp()
    assert prior.tolist() == pytest.approx([4 / 7, 1 / 7, 2 / 7])
    with pytest.raises(ValueError, match="labels"):
        T.log_prior(torch.tensor([0, 3]), 3)


def test_logit_adjustment_undoes_a_skewed_label_prior() -> None:
    """Classes 0/1 overlap (same inputs), with 0 nine times as frequent: plain cross-entropy
    learns to favour 0, the logit-adjusted loss learns the balanced posterior (equal logits)."""
    inputs = torch.ones(200, 1)
    labels = (torch.arange(200) % 10 == 0).long()
    data = TensorDataset(inputs, labels)

    def margin(adjustment: torch.Tensor | None) -> float:
        model = nn.Linear(1, 2)
        T.train(model, data, epochs=30, lr=0.5, batch_size=50, logit_adjustment=adjustment)
        with torch.no_grad():
            logits = model(torch.ones(1, 1))[0]
        return (logits[0] - logits[1]).item()

    assert margin(None) > 1.5  # log(0.9 / 0.1) = 2.2
    assert abs(margin(T.log_prior(labels, 2))) < 0.2


def test_gradient_norm_is_clipped() -> None:
    model = nn.Linear(4, 2)
    data = TensorDataset(1000 * torch.randn(8, 4), torch.zeros(8, dtype=torch.int64))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    T.train(model, DataLoader(data, batch_size=8), optimizer, max_steps=1)
    after = [p.detach() for p in model.parameters()]
    step = torch.cat([(a - b).flatten() for a, b in zip(after, before, strict=True)])
    assert step.norm().item() == pytest.approx(T.CLIP_NORM, rel=1e-4)


def test_fedprox_pulls_towards_the_anchor() -> None:
    data = _blobs()
    anchor_model = _classifier()
    anchor = [p.detach().clone() for p in anchor_model.parameters()]

    def distance(mu: float) -> float:
        model = _classifier()
        T.train(model, data, epochs=2, lr=0.2, proximal_mu=mu)
        return T.proximal_term(list(model.parameters()), anchor).item()

    assert distance(10.0) < 0.5 * distance(0.0)
    params = [nn.Parameter(torch.tensor([1.0, 2.0]))]
    assert T.proximal_term(params, [torch.tensor([0.0, 4.0])]).item() == 5.0


def test_evaluate_is_exact_and_restores_modes() -> None:
    model = nn.Sequential(nn.Linear(1, 2, bias=False), nn.Dropout(0.5))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[-1.0], [1.0]]))
    model.train()
    data = TensorDataset(torch.tensor([[1.0], [-1.0], [2.0]]), torch.tensor([1, 0, 0]))
    loss, accuracy = T.evaluate(model, data)
    assert accuracy == pytest.approx(2 / 3)
    logits = torch.tensor([[-1.0, 1.0], [1.0, -1.0], [-2.0, 2.0]])
    assert loss == pytest.approx(nn.functional.cross_entropy(logits, data.tensors[1]).item())
    assert model.training and model[1].training


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"epochs": 0}, "epochs"), ({"max_steps": 0}, "max_steps"), ({"proximal_mu": -1}, "mu"),
     ({"span": (0.0, 1.5)}, "span"),
     ({"data": TensorDataset(torch.zeros(0, 4), torch.zeros(0))}, "data")],
)
def test_train_rejects_bad_arguments(kwargs: dict, field: str) -> None:
    arguments = {"data": _blobs(), **kwargs}
    with pytest.raises(ValueError, match=field):
        T.train(_classifier(), **arguments)


def _config(**fields: object) -> ExperimentConfig:
    base = {
        "model": "smallcnn", "width": 0.25, "pretrain_epochs": 1, "batch_size": 16,
        "fleet": [{"device": "rpi5", "count": 2}],
    }
    return ExperimentConfig.model_validate({**base, **fields})


def test_pretrain_caches_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFED_CACHE", str(tmp_path))
    config = _config(pretrain_samples=128)
    steps: list[int] = []
    first = T.pretrain_setup_b(config, on_step=lambda s, t, loss: steps.append(s))
    assert steps == list(range(1, 3))  # 128 samples, batch 64, one epoch
    path = T.checkpoint_path(config)
    assert path.is_file() and path.parent == tmp_path / "checkpoints"
    steps.clear()
    second = T.pretrain_setup_b(config, on_step=lambda s, t, loss: steps.append(s))
    assert steps == []
    assert all(torch.equal(a, b) for a, b in zip(
        first.state_dict().values(), second.state_dict().values(), strict=True))
    untrained = T.initial_model(config)
    assert not torch.equal(untrained.features[0][0].weight, first.features[0][0].weight)
    for change in ({"seed": 1}, {"pretrain_samples": 256}, {"pretrain_samples": None},
                   {"pretrain_epochs": 2}, {"width": 0.5}, {"image_size": 28}):
        assert T.checkpoint_path(_config(**{"pretrain_samples": 128, **change})) != path


def test_no_pretraining_gives_the_seeded_model() -> None:
    config = _config(pretrain_epochs=0)
    model = T.pretrain_setup_b(config)
    assert torch.equal(model.features[0][0].weight, T.initial_model(config).features[0][0].weight)


@pytest.mark.parametrize(
    ("compression", "params"),
    [
        ({"method": "hosvd", "eps": 0.9}, {"eps": 0.9}),
        ({"method": "svd", "eps": 0.7}, {"eps": 0.7}),
        ({"method": "asi", "rank": 3}, {"rank": 3}),
        ({"method": "gradfilter", "radius": 4}, {"radius": 4}),
        ({"method": "vanilla"}, {}),
    ],
)
def test_wrap_params(compression: dict, params: dict) -> None:
    assert CompressionConfig(**compression).wrap_params() == params


def test_reduced_pretraining_is_named_with_what_it_trades_away() -> None:
    assert T.pretraining_tradeoff(_config(pretrain_epochs=5)) is None
    capped = T.pretraining_tradeoff(_config(pretrain_epochs=5, pretrain_samples=6000))
    assert capped is not None and "6,000 samples" in capped and "credible" in capped
    assert "1 epochs" in T.pretraining_tradeoff(_config(pretrain_epochs=1))
    assert "untrained" in T.pretraining_tradeoff(_config(pretrain_epochs=0))
