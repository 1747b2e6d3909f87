"""Server-side data and model: the Setup-B pretrained model, the test set, planning a device."""

from __future__ import annotations

import torch
from torch.utils.data import Subset, TensorDataset

from client.planner import Plan, Planner
from client.task import client_dataset
from common.config import ExperimentConfig
from common.data import load_dataset, subsample
from common.devices import DeviceProfile
from common.train import StepCallback, pretrain_setup_b


def pretrained_model(
    config: ExperimentConfig, on_step: StepCallback | None = None
) -> torch.nn.Module:
    """The model pretrained on the server's Setup-B half (checkpoint-cached by common.train)."""
    return pretrain_setup_b(config, on_step=on_step)


def test_dataset(config: ExperimentConfig) -> Subset | TensorDataset:
    """The test set, capped at ``test_samples`` (seeded choice)."""
    _, test = load_dataset(config.dataset, config.image_size)
    indices = subsample(torch.arange(len(test)).numpy(), config.test_samples, config.seed)
    return Subset(test, indices.tolist())


def plan_device(config: ExperimentConfig, device: DeviceProfile) -> Plan:
    """What the planner picks for ``device`` on the pretrained model and partition 0's data."""
    model = pretrained_model(config)
    data = client_dataset(config, 0, config.num_clients)
    probe = next(iter(torch.utils.data.DataLoader(data, batch_size=config.batch_size)))
    return Planner(config).plan(device, model, probe)
