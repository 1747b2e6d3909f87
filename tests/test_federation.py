"""Real federations on both Flower engines, small: every process started is stopped.

Simulation: 3 virtual devices (one microcontroller on the ``fixed`` policy that must run out of
memory), 2 rounds. Deployment: a SuperLink and one SuperNode process per device whose ClientApps
run under the device's real memory limit (a cgroup), one of them (``pi-starved``) too small for a
Python + torch ClientApp.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest

from bench.cancel import cancel_during_pretraining
from client.node import resolve_node
from common.config import ExperimentConfig
from common.devices import assign_entries, load_catalogue
from common.events import Event
from common.record import ClientRecord
from server import fleet as deployment
from server import procs, runner
from server.app import NodeDirectory
from server.report import read_events
from tests.dashboard_support import DashboardProcess, wait_for

pytestmark = pytest.mark.slow

OK_FIELDS = ("num_examples", "train_loss", "accuracy", "budget_bytes", "training_bytes",
             "activation_bytes", "grad_bytes", "optimizer_bytes", "param_bytes",
             "transient_bytes", "compressed_bytes", "peak_forward_bytes", "peak_step_bytes",
             "total_bytes", "method", "last_k", "ranks", "batch_size", "wall_s", "sim_time_s")


def _config(fleet: list[dict], rounds: int, **overrides: object) -> ExperimentConfig:
    return ExperimentConfig(**{
        "name": "tiny", "model": "smallcnn", "width": 0.5, "fleet": fleet, "rounds": rounds,
        "local_steps": 1, "batch_size": 8, "samples_per_client": 16, "test_samples": 64,
        "pretrain_epochs": 0, "min_train_clients": 1, "partitioner": "iid", "seed": 3,
        "round_timeout_s": 150, "compression": {"method": "hosvd", "last_k": 3, "eps": 0.8},
        **overrides,
    })


def _online(config: ExperimentConfig, partition_id: int, server_round: int) -> bool:
    node = resolve_node(config, {"partition-id": partition_id})
    return node.available(config, server_round)


def _no_descendants_left() -> list[int]:
    return [p.pid for p in psutil.Process().children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _train_results(outcome: runner.RunOutcome) -> list[ClientRecord]:
    return [e.client for e in outcome.events if e.client is not None]


def _recorded_end(out_dir: Path) -> Event:
    """The final state of the run recorded in ``out_dir``, asserting that it is the last event
    and the only one that ends the run."""
    events = read_events(out_dir)[0]
    ends = [e for e in events if e.state is not None and e.state.status != "running"]
    assert len(ends) == 1 and events[-1] is ends[0], [e.state for e in events if e.state]
    return ends[0]


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
            assert c.peak_step_bytes >= c.peak_forward_bytes > 0
            assert c.budget_bytes >= c.training_bytes > c.activation_bytes
            assert c.rss_peak_bytes is None and c.memory_limit_bytes is None  # simulation
    last = [c for c in clients if c.round == 2]
    assert rounds[-1].num_ok == sum(c.status == "ok" for c in last)
    assert rounds[-1].num_failed == 3 - rounds[-1].num_ok
    assert (tmp_path / "events.jsonl").read_text().count("\n") == len(outcome.events)
    assert outcome.state.status == "finished" and _recorded_end(tmp_path) == outcome.events[-1]
    assert _no_descendants_left() == []


def _cgroup_value(node: deployment.FleetNode, name: str) -> str:
    return (Path(str(node.process.cgroup)) / name).read_text()


@pytest.mark.skipif(not procs.cgroup_available(), reason="needs a writable cgroup-v1 memory "
                    "hierarchy (/sys/fs/cgroup/memory, root): the nodes' limits are cgroups")
@pytest.mark.timeout(420, method="signal")  # signal: the runner's finally still stops everything
def test_deployment_engine_under_real_memory_limits(tmp_path: Path) -> None:
    config = _config([{"device": "rpi5", "count": 1}, {"device": "pi-starved", "count": 1}],
                     rounds=1, image_size=28)
    assert all(_online(config, p, 1) for p in range(2))  # seed 3: no node drops out
    catalogue = load_catalogue()
    fleets: list[deployment.FleetState] = []
    limits: dict[int, tuple[str, int]] = {}  # partition id -> (device, limit read back)
    usage: dict[str, tuple[int, int]] = {}  # device -> (OOM kills, peak bytes) at its reply

    def on_started(state: deployment.FleetState) -> None:
        fleets.append(state)
        limits.update({n.partition_id: (n.device, int(_cgroup_value(n, "memory.limit_in_bytes")))
                       for n in state.nodes})

    def on_event(event: Event) -> None:  # the cgroups exist until the run is over
        if event.client is not None:
            node = next(n for n in fleets[0].nodes if n.partition_id == event.client.partition_id)
            usage[node.device] = (procs.oom_kills(str(node.process.cgroup)),
                                  int(_cgroup_value(node, "memory.max_usage_in_bytes")))

    outcome = runner.run(config, catalogue, "deployment", tmp_path, "deploy-test",
                         on_event=on_event, on_started=on_started)

    assert outcome.status == "finished:completed"
    assert [e.round.round for e in outcome.events if e.round is not None] == [0, 1]
    assert sorted(limits.values()) == sorted(
        (d.name, d.ram_bytes) for d in (catalogue.profile("rpi5"), catalogue.profile("pi-starved")))
    clients = {c.device: c for c in _train_results(outcome)}
    assert sorted(clients) == ["pi-starved", "rpi5"]
    starved, rpi5 = clients["pi-starved"], clients["rpi5"]
    # killed by the kernel at its 150 MiB limit: named so from the cgroup's own OOM record
    assert starved.status == "oom", starved
    assert starved.reason == "out of memory: killed by the kernel at the 150 MiB limit", starved
    assert usage["pi-starved"][0] >= 1
    # the round stopped waiting once the kill was seen: Flower's own error reply for the dead
    # ClientApp ("ClientApp stopped responding.", after its heartbeat lapsed: 60 s) never came
    assert not (tmp_path / "client-errors.log").exists()
    assert rpi5.status == "ok" and all(getattr(rpi5, f) is not None for f in OK_FIELDS), rpi5
    assert usage["rpi5"] == (0, usage["rpi5"][1]) and usage["rpi5"][1] > 100 * 2**20  # torch ran
    # the ClientApp read its own cgroup: the limit, and a peak no later reading is below
    assert rpi5.memory_limit_bytes == catalogue.profile("rpi5").ram_bytes
    assert 100 * 2**20 < rpi5.rss_peak_bytes <= usage["rpi5"][1]
    # nothing of the run is left: processes (by recorded pid and as our descendants), cgroups
    assert not any(p.alive() for p in fleets[0].processes)
    assert _no_descendants_left() == []
    assert not (procs.CGROUP_V1_ROOT / "edgefed" / fleets[0].group).exists()
    assert not (tmp_path / "flower" / deployment.STATE_FILE).exists()
    assert _recorded_end(tmp_path).state.status == "finished"


@pytest.mark.timeout(420)
@pytest.mark.parametrize(("engine", "processes"), [
    ("simulation", {"flower-superlin", "flwr-simulation", "raylet"}),
    ("deployment", {"flower-superlin", "flower-supernod", "flower-superexe", "flwr-serverapp"}),
])
def test_sigterm_during_pretraining_stops_the_whole_run_within_2_s(
    tmp_path: Path, engine: str, processes: set[str],
) -> None:
    stop = cancel_during_pretraining(engine, tmp_path)  # see bench/cancel.py
    assert processes <= set(stop.processes.values()), stop  # a real run was stopped
    assert stop.exit_code == 130, (tmp_path / "cli.log").read_text()
    assert stop.left == [] and stop.seconds <= 2.0, stop
    end = _recorded_end(tmp_path / "out")
    assert end.state.status == "cancelled" and end.state.message == "received SIGTERM"
    superlink = next(pid for pid, name in stop.processes.items() if name == "flower-superlin")
    assert not (procs.CGROUP_V1_ROOT / "edgefed" / f"flower-{superlink}").exists()


@pytest.mark.e2e
@pytest.mark.timeout(420)
def test_a_run_where_no_client_trains_is_failed_in_the_cli_and_the_dashboard(
    tmp_path: Path,
) -> None:
    config = _config([{"device": "mcu", "count": 2, "policy": "fixed"}], rounds=1)
    with DashboardProcess(tmp_path) as server:
        experiment = httpx.post(f"{server.url}/api/experiments",
                                json=config.model_dump(mode="json")).json()
        run_id = httpx.post(f"{server.url}/api/experiments/{experiment['id']}/launch").json()["id"]
        run = wait_for(lambda: (r := httpx.get(f"{server.url}/api/runs/{run_id}").json()["run"])
                       ["exit_code"] is not None and r, 360, "edgefed run to exit")
    assert run["status"] == "failed" and run["exit_code"] == 1, run
    assert run["message"].startswith(
        "no client trained successfully in any of the 1 rounds (2 oom; most common reason: "
        "out of memory: needs "), run
    end = _recorded_end(tmp_path / "runs" / run_id / "out")  # edgefed run's own record
    assert end.state.status == "failed" and end.state.message == run["message"]


def test_unanswered_node_named_by_the_one_assignment() -> None:
    config = _config([{"device": "rpi5", "count": 2}, {"device": "phone", "count": 1},
                      {"device": "pi-starved", "count": 1}], rounds=1)
    assigned = [e.device for e in assign_entries(config.fleet)]
    answered = {7: (1, assigned[1]), 8: (3, assigned[3])}
    directory = NodeDirectory(config, answered)
    assert directory.identity(9) == (0, assigned[0])
    assert directory.identity(10) == (2, assigned[2])
    assert directory.identity(7) == answered[7] and directory.identity(9) == (0, assigned[0])
    assert directory.identity(11) == (4, "unknown")  # more nodes than the fleet has


def test_an_answer_against_the_assignment_is_logged_and_kept(
        caplog: pytest.LogCaptureFixture) -> None:
    config = _config([{"device": "rpi5", "count": 1}, {"device": "phone", "count": 1}], rounds=1)
    assigned = [e.device for e in assign_entries(config.fleet)]
    with caplog.at_level("WARNING"):
        directory = NodeDirectory(config, {5: (0, assigned[1])})
    assert f"node 5 answers partition 0 is {assigned[1]}" in caplog.text
    assert directory.identity(5) == (0, assigned[1])
    assert directory.identity(6) == (1, assigned[1])


@pytest.mark.timeout(420, method="signal")
def test_deployment_without_a_memory_cgroup_says_limits_are_rlimit_based(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(procs, "CGROUP_V1_ROOT", tmp_path / "no-v1")  # as on a host without
    monkeypatch.setattr(procs, "CGROUP_V2_ROOTS", (tmp_path / "no-v2",))  # a usable hierarchy
    config = _config([{"device": "rpi5", "count": 1}], rounds=1, image_size=28)
    out = tmp_path / "out"
    outcome = runner.run(config, load_catalogue(), "deployment", out, "rlimit-test")
    states = [e.state for e in outcome.events if e.state is not None]
    assert procs.RLIMIT_WARNING in [s.message for s in states if s.status == "running"]
    assert outcome.state.status == "finished", outcome.state  # the ClientApp ran under RLIMIT_DATA
    assert outcome.state.message.endswith(procs.RLIMIT_WARNING)
    assert _recorded_end(out) == outcome.events[-1]
    assert _no_descendants_left() == []
