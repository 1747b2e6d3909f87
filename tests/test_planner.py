"""The budget planner: what it picks for every catalogue profile fits when measured."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from client.planner import Planner, candidates, own_candidate
from client.task import client_dataset, trainable_sgd
from common.compression import wrap_last_layers
from common.config import ExperimentConfig
from common.devices import DeviceProfile, load_catalogue
from common.memory import measure
from common.train import initial_model
from common.validate import load_config

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
CATALOGUE = load_catalogue()


@pytest.fixture(scope="module")
def setup() -> tuple[ExperimentConfig, nn.Module, tuple[torch.Tensor, torch.Tensor], Planner]:
    config = load_config(QUICKSTART)
    torch.manual_seed(0)
    model = initial_model(config)
    data = client_dataset(config, 3, config.num_clients)
    probe = next(iter(torch.utils.data.DataLoader(data, batch_size=config.batch_size)))
    return config, model, probe, Planner(config)


def _measured(config: ExperimentConfig, model: nn.Module, probe, candidate) -> int:
    """An independent measurement of a candidate, as the ClientApp's first step does it."""
    wrapped = wrap_last_layers(copy.deepcopy(model), candidate.method, candidate.last_k,
                               **candidate.wrap_kwargs())
    x, y = probe[0][: candidate.batch_size], probe[1][: candidate.batch_size]
    optimizer = trainable_sgd(wrapped, config.lr)
    return measure(wrapped, x, y, nn.CrossEntropyLoss(), optimizer).training_bytes


@pytest.mark.parametrize("device", sorted(CATALOGUE.profiles))
def test_fit_pick_fits_when_measured(setup, device: str) -> None:
    config, model, probe, planner = setup
    profile = CATALOGUE.profile(device)
    plan = planner.plan(profile, model, probe, "fit")
    assert plan.fits, plan.reason
    assert plan.needed_bytes <= profile.budget_bytes
    assert _measured(config, model, probe, plan.chosen) <= profile.budget_bytes
    # every option tried before the pick was over budget: nothing more capable fitted
    assert all(not o.fits for o in plan.options[:-1])
    assert plan.options[-1].candidate == plan.chosen


@pytest.mark.parametrize("device", sorted(CATALOGUE.profiles))
def test_fixed_runs_the_experiment_config_or_reports_oom(setup, device: str) -> None:
    config, model, probe, planner = setup
    profile = CATALOGUE.profile(device)
    plan = planner.plan(profile, model, probe, "fixed")
    own = own_candidate(config)
    assert [o.candidate for o in plan.options] == [own]
    needed = _measured(config, model, probe, own)
    assert plan.fits == (needed <= profile.budget_bytes)
    if not plan.fits:
        assert plan.reason == f"out of memory: needs {needed} bytes, budget {profile.budget_bytes}"


def test_microcontroller_needs_the_planner(setup) -> None:
    config, model, probe, planner = setup
    mcu = CATALOGUE.profile("mcu")
    assert not planner.plan(mcu, model, probe, "fixed").fits
    chosen = planner.plan(mcu, model, probe, "fit").chosen
    assert chosen.last_k < config.compression.last_k


def test_nothing_fits_a_tiny_budget(setup) -> None:
    _, model, probe, planner = setup
    tiny = CATALOGUE.profile("mcu").model_copy(update={"name": "tiny", "budget_bytes": 64})
    plan = planner.plan(tiny, model, probe, "fit")
    assert not plan.fits
    assert plan.reason.startswith("out of memory: needs ") and plan.reason.endswith("budget 64")


def test_candidate_order_layers_and_eps_then_batch_then_method() -> None:
    config = ExperimentConfig(
        fleet=[{"device": "rpi5", "count": 2}], batch_size=4,
        compression={"method": "svd", "last_k": 2, "eps": 0.9},
    )
    order = [(c.method, c.batch_size, c.last_k, c.eps) for c in candidates(config)]
    assert order[0] == ("svd", 4, 2, 0.9)
    assert order[:6] == [("svd", 4, 2, e) for e in (0.9, 0.8, 0.7, 0.6, 0.5)] + [
        ("svd", 4, 1, 0.9)]
    methods = [m for m, *_ in order]
    assert methods.index("hosvd") == len(order) // 2  # cheaper method only after all batches
    batches = [b for m, b, *_ in order if m == "svd"]
    assert batches == sorted(batches, reverse=True)


def test_device_profile_is_what_the_planner_budgets(setup) -> None:
    _, model, probe, planner = setup
    roomy = DeviceProfile(name="roomy", ram_bytes=2**31, budget_bytes=2**30, flops=1e9,
                          uplink_bps=1e6, downlink_bps=1e6, availability=1.0, cpus=1.0)
    plan = planner.plan(roomy, model, probe, "fit")
    assert plan.chosen == own_candidate(planner.config)
