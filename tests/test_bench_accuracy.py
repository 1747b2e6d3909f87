"""The arithmetic of the accuracy benchmarks: FedAvg's weighted mean, per-round summaries over
seeds, one Pareto point from several seeds; and that a client's round on cached prefix
features is the round of the whole model."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.federated import ARMS, CREDIBLE, fedavg, local_update, summary, wrapped
from bench.pareto import VARIANTS, Point, Variant, combine
from bench.phases import Phases
from client.task import trainable_sgd
from common.compression import trainable_layers, wrap_last_layers
from common.featurecache import FeatureCache
from common.models import build_model
from common.train import batchnorm_eval, log_prior, train
from common.validate import load_config


def test_fedavg_weights_by_examples_and_keeps_counters() -> None:
    states = [{"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(7)},
              {"w": torch.tensor([3.0, 0.0]), "n": torch.tensor(9)}]
    mean = fedavg(states, [1, 2])
    assert mean["w"].tolist() == pytest.approx([2.0, 4 / 3])
    assert mean["n"].item() == 7


def test_summary_reports_mean_range_and_worst_drop() -> None:
    runs = [[0.90, 0.91, 0.89], [0.90, 0.92, 0.93]]
    result = summary(runs)
    assert result["mean"] == pytest.approx([0.90, 0.915, 0.91])
    assert result["low"] == [0.90, 0.91, 0.89] and result["high"] == [0.90, 0.92, 0.93]
    assert result["worst_below_start"] == pytest.approx(0.01)


def test_combine_takes_means_ranges_and_largest_memory() -> None:
    one = Point(label="hosvd", method="hosvd", last_k=2, seeds=[0], accuracy=0.8,
                accuracy_low=0.8, accuracy_high=0.8, client_accuracy=0.7,
                client_accuracy_low=0.7, client_accuracy_high=0.7, activation_bytes=100,
                compressed_bytes=50, compressed_bytes_mean=40.0, training_bytes=300,
                peak_forward_bytes=900, step_ms=10.0, ranks=[[1, 2, 3, 4]])
    two = dataclasses.replace(one, seeds=[1], accuracy=0.9, accuracy_low=0.9, accuracy_high=0.9,
                              activation_bytes=120, step_ms=20.0, ranks=[[2, 2, 2, 2]])
    point = combine([one, two])
    assert point.seeds == [0, 1]
    assert (point.accuracy, point.accuracy_low, point.accuracy_high) == pytest.approx(
        (0.85, 0.8, 0.9))
    assert point.activation_bytes == 120 and point.step_ms == 15.0
    assert point.ranks == [[1, 2, 3, 4]]


def test_fedavg_keeps_a_tensor_every_client_left_unchanged_bit_for_bit() -> None:
    frozen = torch.tensor([0.1, 0.7, 1.3, -2.9])
    weights = [1, 2, 4]
    naive = sum(frozen * (n / 7) for n in weights)
    assert not torch.equal(naive, frozen)  # floating point: the mean of equal values drifts
    states = [{"frozen": frozen.clone(), "w": torch.tensor([float(i)])} for i in range(3)]
    mean = fedavg(states, weights)
    assert torch.equal(mean["frozen"], frozen)
    assert mean["w"].item() == pytest.approx((0 + 2 + 8) / 7)


def test_local_update_on_cached_features_matches_training_the_whole_model() -> None:
    torch.manual_seed(0)
    model = build_model("mobilenetv2", 10, 1, 32, 0.25).eval()
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(48, 1, 32, 32, generator=generator),
                         torch.randint(0, 10, (48,), generator=generator))
    config = load_config(CREDIBLE).model_copy(update={"local_steps": 3, "batch_size": 16})
    arm = ARMS["hosvd0.8 k4"]
    torch.manual_seed(5)
    cached = local_update(model, arm, FeatureCache(model, data), config, 2, seed=3)
    whole = wrapped(model, arm)
    loader = DataLoader(data, batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(3 * 100_003 + 2))
    torch.manual_seed(5)
    train(whole, loader, trainable_sgd(whole, config.lr), max_steps=3,
          logit_adjustment=log_prior(data.tensors[1], 10), span=(0.2, 0.4))
    changed = 0
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(cached[key], value, atol=1e-5, rtol=0)
        changed += not torch.equal(value, model.state_dict()[key])
    assert changed >= 4  # the four trained layers moved


def test_phases_record_consecutive_wall_times_and_load() -> None:
    phases = Phases()
    phases.end("first")
    time.sleep(0.02)
    phases.end("second")
    record = phases.record()
    assert list(record["phases"]) == ["first", "second"]
    assert record["phases"]["second"]["seconds"] >= 0.02
    assert sum(r["seconds"] for r in record["phases"].values()) <= record["seconds"]
    assert len(record["load_average_at_start"]) == 3
    assert phases.line().startswith("first 0 s (load ")


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.label)
def test_every_pareto_variant_trains_all_53_layers(variant: Variant) -> None:
    """Depthwise convs and the Linear included: one step gives every trainable weight a
    finite, non-zero gradient (gradfilter keeps a 2-D Linear input whole)."""
    torch.manual_seed(0)
    model = build_model("mobilenetv2", 10, 1, 32, 0.5)
    layers = trainable_layers(model)
    assert len(layers) == 53
    assert any(m.groups > 1 for _, m in layers if isinstance(m, nn.Conv2d))
    batchnorm_eval(wrap_last_layers(model, variant.method, len(layers), **dict(variant.params)))
    loss = nn.functional.cross_entropy(model(torch.randn(8, 1, 32, 32)),
                                       torch.randint(0, 10, (8,)))
    loss.backward()
    for name, layer in layers:
        grad = layer.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
