"""Real federations on both Flower engines, small: every process started is stopped.

Simulation: 3 virtual devices (one microcontroller on the ``fixed`` policy that must run out of
memory), 2 rounds. Deployment: a SuperLink and one SuperNode process per device under its real
memory limit, one of them (``pi-starved``) too small for a Python + torch ClientApp.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from client.task import resolve_node
from common.config import ExperimentConfig
from common.devices import assign_entries, load_catalogue
from common.events import ClientResult
from server import runner
from server.app import NodeDirectory

pytestmark = pytest.mark.slow

OK_FIELDS = ("num_examples", "train_loss", "accuracy", "activation_bytes", "compressed_bytes",
             "peak_bytes", "total_bytes", "budget_bytes", "method", "last_k", "ranks",
             "batch_size", "wall_s", "sim_time_s")


def _config(fleet: list[dict], rounds: int) -> ExperimentConfig:
    return ExperimentConfig(
        name="tiny", model="smallcnn", width=0.5, fleet=fleet, rounds=rounds,
        local_steps=1, batch_size=8, samples_per_client=16, test_samples=64,
        pretrain_epochs=0, min_train_clients=1, partitioner="iid", seed=3, round_timeout_s=150,
        compression={"method": "hosvd", "last_k": 3, "eps": 0.8},
    )


def _online(config: ExperimentConfig, partition_id: int, server_round: int) -> bool:
    node = resolve_node(config, {"partition-id": partition_id})
    return node.available(config, server_round)


def _no_descendants_left() -> list[int]:
    return [p.pid for p in psutil.Process().children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _train_results(outcome: runner.RunOutcome) -> list[ClientResult]:
    return [e.client for e in outcome.events if e.client is not None]


@pytest.mark.timeout(600)
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
    for c in clients:
        if not _online(config, c.partition_id, c.round):
            assert c.status == "dropped" and "offline" in c.reason
        elif c.device == "mcu":  # fixed policy, 320 KiB budget: the last 3 layers do not fit
            assert c.status == "oom" and c.reason.startswith("out of memory: needs "), c
        else:
            assert c.status == "ok", c
            assert all(getattr(c, f) is not None for f in OK_FIELDS), c
            assert c.peak_bytes > 0 and c.budget_bytes > c.activation_bytes
    last = [c for c in clients if c.round == 2]
    assert rounds[-1].num_ok == sum(c.status == "ok" for c in last)
    assert rounds[-1].num_failed == 3 - rounds[-1].num_ok
    assert (tmp_path / "events.jsonl").read_text().count("\n") == len(outcome.events)
    assert _no_descendants_left() == []


@pytest.mark.skipif(
    os.environ.get("EDGEFED_DEPLOYMENT_TEST") != "1",
    reason="known open problem: on this machine the deployment run has stalled for more than "
    "10 min before round 1; set EDGEFED_DEPLOYMENT_TEST=1 to run it",
)
@pytest.mark.timeout(900)  # a killed ClientApp is reported after Flower's ~60 s heartbeat expiry
def test_deployment_engine_under_real_memory_limits(tmp_path: Path) -> None:
    config = _config([{"device": "rpi5", "count": 2}, {"device": "pi-starved", "count": 1}],
                     rounds=1)
    outcome = runner.run(config, load_catalogue(), "deployment", tmp_path, "deploy-test")
    assert outcome.status == "finished:completed"
    clients = _train_results(outcome)
    assert sorted(c.partition_id for c in clients) == [0, 1, 2]
    for c in clients:
        if not _online(config, c.partition_id, 1):
            assert c.status == "dropped"
        elif c.device == "pi-starved":  # its ClientApp is killed at the 150 MiB limit
            assert c.status == "error", c
            assert c.reason in ("ClientApp stopped responding.",
                                "no reply before the round timeout"), c
        else:
            assert c.status == "ok", c
    assert [e.round.round for e in outcome.events if e.round is not None] == [0, 1]
    assert _no_descendants_left() == []
    assert not list((tmp_path / "flower").glob("fleet.json"))


def test_unanswered_node_named_from_the_seeded_assignment_when_answers_agree() -> None:
    config = _config([{"device": "rpi5", "count": 2}, {"device": "phone", "count": 1},
                      {"device": "pi-starved", "count": 1}], rounds=1)
    seeded = [e.device for e in assign_entries(config)]
    assert seeded == ["pi-starved", "rpi5", "phone", "rpi5"]  # seed 3's shuffle
    # answers as `edgefed run` numbers nodes; the fleet minus them would leave two kinds
    directory = NodeDirectory(config, {7: (1, "rpi5"), 8: (3, "rpi5")})
    assert directory.identity(9) == (0, "pi-starved")
    assert directory.identity(10) == (2, "phone")
    assert directory.identity(7) == (1, "rpi5") and directory.identity(9) == (0, "pi-starved")


def test_unanswered_node_named_from_the_leftover_fleet_when_numbered_otherwise() -> None:
    fleet = [{"device": "rpi5", "count": 2}, {"device": "pi-starved", "count": 1}]
    config = _config(fleet, rounds=1)
    assert assign_entries(config)[2].device == "rpi5"  # the seeded name would be wrong here
    # the compose fleet numbers devices in mix order: rpi5, rpi5, pi-starved (never answers)
    directory = NodeDirectory(config, {1: (0, "rpi5"), 2: (1, "rpi5")})
    assert directory.identity(3) == (2, "pi-starved")

    config = _config(fleet[:1] + [{"device": "phone", "count": 1}] + fleet[1:], rounds=1)
    directory = NodeDirectory(config, {1: (0, "rpi5"), 2: (1, "rpi5")})
    assert directory.identity(3) == (2, "unknown (one of phone, pi-starved)")
    assert directory.identity(4) == (3, "unknown (one of phone, pi-starved)")
