"""Real federations on both Flower engines, small: every process started is stopped.

Simulation: 3 virtual devices (one microcontroller on the ``fixed`` policy that must run out of
memory), 2 rounds. Deployment: a SuperLink and one SuperNode process per device under its real
memory limit, one of them (``pi-starved``) too small for a Python + torch ClientApp.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from common.config import ExperimentConfig
from common.devices import load_catalogue
from common.events import ClientResult
from server import runner

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

OK_FIELDS = ("num_examples", "train_loss", "accuracy", "activation_bytes", "compressed_bytes",
             "peak_bytes", "total_bytes", "budget_bytes", "method", "last_k", "ranks",
             "batch_size", "wall_s", "sim_time_s")


def _config(fleet: list[dict], rounds: int) -> ExperimentConfig:
    return ExperimentConfig(
        name="tiny", model="smallcnn", width=0.5, fleet=fleet, rounds=rounds,
        local_steps=1, batch_size=8, samples_per_client=16, test_samples=64,
        pretrain_epochs=0, min_train_clients=1, partitioner="iid", seed=3,
        compression={"method": "hosvd", "last_k": 3, "eps": 0.8},
    )


def _no_descendants_left() -> list[int]:
    return [p.pid for p in psutil.Process().children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _train_results(outcome: runner.RunOutcome) -> list[ClientResult]:
    return [e.client for e in outcome.events if e.client is not None]


def test_simulation_engine_small_run(tmp_path: Path) -> None:
    config = _config([{"device": "mcu", "count": 1, "policy": "fixed"},
                      {"device": "jetson-nano", "count": 2}], rounds=2)
    outcome = runner.run(config, load_catalogue(), "simulation", tmp_path, "sim-test")
    assert outcome.status == "finished:completed"
    rounds = [e.round for e in outcome.events if e.round is not None]
    assert [r.round for r in rounds] == [0, 1, 2]
    clients = _train_results(outcome)
    assert {(c.round, c.partition_id) for c in clients} == {
        (r, p) for r in (1, 2) for p in range(3)}
    oom = [c for c in clients if c.device == "mcu"]
    assert all(c.status == "oom" and c.reason.startswith("out of memory: needs ") for c in oom)
    ok = [c for c in clients if c.status == "ok"]
    assert len(ok) == 4 and all(c.device == "jetson-nano" for c in ok)
    for c in ok:
        assert all(getattr(c, f) is not None for f in OK_FIELDS), c
        assert c.total_bytes >= c.activation_bytes and c.budget_bytes > 0
    assert rounds[-1].num_ok == 2 and rounds[-1].num_failed == 1
    assert (tmp_path / "events.jsonl").read_text().count("\n") == len(outcome.events)
    assert _no_descendants_left() == []


def test_deployment_engine_under_real_memory_limits(tmp_path: Path) -> None:
    config = _config([{"device": "rpi5", "count": 2}, {"device": "pi-starved", "count": 1}],
                     rounds=1)
    outcome = runner.run(config, load_catalogue(), "deployment", tmp_path, "deploy-test")
    assert outcome.status == "finished:completed"
    clients = {c.device: c for c in _train_results(outcome)}
    assert len(_train_results(outcome)) == 3
    starved = clients["pi-starved"]
    assert starved.status == "error" and starved.reason
    assert clients["rpi5"].status == "ok"
    assert [e.round.round for e in outcome.events if e.round is not None] == [0, 1]
    assert _no_descendants_left() == []
    assert not list((tmp_path / "flower").glob("fleet.json"))
