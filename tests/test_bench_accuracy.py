"""The arithmetic of the accuracy benchmarks: FedAvg's weighted mean, per-round summaries over
seeds, and one Pareto point from several seeds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.federated import fedavg, summary
from bench.pareto import Point, combine


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
