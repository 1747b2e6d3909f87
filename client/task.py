"""What a node needs from the library for one experiment: its model and its data (who the node
is: ``client.node``).

Everything is derived from the experiment (``ExperimentConfig``) and the node's identity, and
cached per process, so the many virtual clients a Simulation-Engine actor serves share one copy
of the dataset and one partitioning.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.config import ExperimentConfig
from common.data import load_rows, read_raw, setup_b_split, stored_partition, subsample
from common.train import sgd


def trainable_sgd(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Setup B's optimizer (``common.train.sgd``) over the trainable parameters."""
    return sgd([p for p in model.parameters() if p.requires_grad], lr)


@lru_cache(maxsize=4)
def _client_partitions(
    dataset: str, partitioner: str, alpha: float, classes_per_client: int, seed: int,
    num_partitions: int,
) -> list[np.ndarray]:
    """Training-set rows of every partition of the Setup-B client half (from the labels only;
    stored on disk by ``stored_partition``, so a ClientApp process that finds it there never
    imports flwr-datasets)."""
    labels = read_raw(dataset)[1]
    _, client_half = setup_b_split(labels, seed=seed)
    parts = stored_partition(labels[client_half], num_partitions, partitioner, alpha,
                             classes_per_client, seed)
    return [client_half[p] for p in parts]


def partitions(config: ExperimentConfig, num_partitions: int) -> list[np.ndarray]:
    """Training-set rows of every partition of the Setup-B client half (computed once and
    stored; the ServerApp calls this before sampling so that ClientApps only read them)."""
    return _client_partitions(
        config.dataset, config.partitioner, config.alpha, config.classes_per_client,
        config.seed, num_partitions,
    )


def client_indices(config: ExperimentConfig, partition_id: int, num_partitions: int) -> np.ndarray:
    """Training-set rows of partition ``partition_id`` of the Setup-B client half, capped at
    ``samples_per_client`` (seeded with ``seed + partition_id``)."""
    parts = partitions(config, num_partitions)
    return subsample(parts[partition_id], config.samples_per_client, config.seed + partition_id)


def client_dataset(
    config: ExperimentConfig, partition_id: int, num_partitions: int
) -> TensorDataset:
    """The rows of :func:`client_indices` as float tensors; only they are converted, so a
    process holds the shared uint8 training set plus its own partition, not a float copy of
    the whole set."""
    rows = client_indices(config, partition_id, num_partitions)
    return load_rows(config.dataset, rows, config.image_size)
