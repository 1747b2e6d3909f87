"""The compose fleet end to end on a real Docker engine (``make compose-test``).

1. Engine: ``deploy/docker-engine.sh start`` when no engine answers; stopped at the end only then.
2. Image: ``deploy/build-image.sh`` (local base image + wheelhouse when no registry answers; the
   tag is a content hash, so an unchanged tree reuses the image).
3. Fleet: ``edgefed compose --fleet compose-test`` brought up as project ``edgefed-e2e``; the
   SuperLink and the dashboard are published on free loopback ports.
4. Limits: every device's app container has ``HostConfig.Memory`` = the catalogue's ``ram_bytes``
   and ``NanoCpus`` = ``cpus`` * 1e9.
5. Experiment: 2 rounds launched through the dashboard's API on the deployment engine, attached
   to the fleet's SuperLink. Every device that fits reports metrics in every round; the device
   whose limit is too small fails each round with a reason (its ClientApp is killed or errors)
   and the run still finishes.
6. Teardown: ``docker-compose down -v`` then removal by id of anything left of the project, with
   timeouts; no container, network or volume of the project may be left, and an engine started
   here must no longer answer once stopped. Teardown runs on failure and on SIGTERM too.

Nothing here waits without a deadline: every command runs in its own process group, killed as a
whole when its timeout passes, and the whole run is capped (``--budget``). The run ends with a
summary of every step (seconds, ok/FAILED) and exits 1 if any step or check failed.

``--tls`` runs the same with the TLS + SuperNode-authentication overlay and fresh certificates
(``deploy/certs.sh``): every SuperNode must be registered and verified to take part.

Logs of every service go to ``test-output/compose-e2e/logs`` when a step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import httpx

from client.node import Node
from common.config import ExperimentConfig
from common.devices import Catalogue, DeviceProfile, load_catalogue
from server.compose import fleet_devices, fleet_mix, generate_compose, generate_tls_overlay
from server.procs import signal_group

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "test-output" / "compose-e2e"
PROJECT = "edgefed-e2e"
FLEET = "compose-test"
ROUNDS = 2
T = TypeVar("T")


class Failed(AssertionError):
    """A check of the end-to-end test did not hold."""


class Clock:
    """The run's deadline: every wait takes what is left, never more."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.monotonic() + budget_s

    def left(self, cap: float) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Failed("out of time: the end-to-end budget is spent")
        return min(cap, left)


def log(message: str) -> None:
    print(f"[compose-e2e {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sh(cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None,
       check: bool = True) -> str:
    """Run ``cmd`` in its own process group with a timeout; its stdout, or :class:`Failed` with
    its stderr. On timeout (or any interruption) the whole group is killed, so that nothing it
    started (``docker build``, ``debootstrap``) outlives it."""
    try:
        proc = subprocess.Popen(list(cmd), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as err:
        raise Failed(f"{cmd[0]}: {err.strerror} (is it installed?)") from None
    with proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException as exc:
            signal_group(proc.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=10)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise Failed(f"{' '.join(cmd[:3])} ...: no answer after {timeout:.0f} s; "
                             "killed") from None
            raise
    if check and proc.returncode != 0:
        raise Failed(f"{' '.join(cmd)} exited {proc.returncode}: {err[-3000:]}")
    return out


def poll(what: str, probe: Callable[[], T | None], clock: Clock, cap: float,
         every: float = 3.0) -> T:
    """Call ``probe`` until it returns something other than None, within ``cap`` seconds."""
    deadline = time.monotonic() + clock.left(cap)
    while time.monotonic() < deadline:
        result = probe()
        if result is not None:
            return result
        time.sleep(every)
    raise Failed(f"{what}: not within {cap:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Report:
    """Every step's seconds and outcome, and every problem, for the summary that ends the run."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.rows: list[tuple[str, float, str, str]] = []
        self.problems: list[str] = []

    @contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """Time the body as step ``name``; it appends its notes to the list it is given."""
        notes: list[str] = []
        began, outcome = time.monotonic(), "FAILED"
        try:
            yield notes
            outcome = "ok"
        finally:
            self.rows.append((name, time.monotonic() - began, outcome, "; ".join(notes)))

    def settle(self, name: str, action: Callable[[list[str]], None]) -> None:
        """Run a cleanup step; its failure is recorded, never raised, so that it cannot hide
        the failure that led to it."""
        try:
            with self.step(name) as notes:
                action(notes)
        except Failed as err:
            self.problems.append(f"{name}: {err}")

    def summary(self) -> str:
        width = max([len(row[0]) for row in self.rows] + [4])
        lines = [f"compose-e2e summary (project {PROJECT}, fleet {FLEET}, {ROUNDS} rounds)"]
        lines += [f"  {name:<{width}} {seconds:6.0f} s  {outcome:<6}  {notes}".rstrip()
                  for name, seconds, outcome, notes in self.rows]
        verdict = "FAILED" if self.problems else "PASSED"
        lines.append(f"compose-e2e {verdict} in {time.monotonic() - self.started:.0f} s")
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def engine_answers() -> bool:
    try:
        sh(["docker", "info"], timeout=30)
    except Failed:
        return False
    return True


@contextmanager
def engine(clock: Clock, report: Report) -> Iterator[None]:
    """A Docker engine for the duration. One that answers already is reused and left running;
    one started here is stopped here (even when starting it failed half-way), and must then no
    longer answer."""
    started_here = False

    def stop(notes: list[str]) -> None:
        notes.append(sh(["deploy/docker-engine.sh", "stop"], timeout=90).strip())
        if engine_answers():
            raise Failed("the engine started here still answers after being stopped")

    try:
        with report.step("engine") as notes:
            if engine_answers():
                notes.append("an engine answered already: reused, left running")
            else:
                log("no Docker engine answers: starting one")
                started_here = True
                out = sh(["deploy/docker-engine.sh", "start"], timeout=clock.left(180))
                notes.append(out.strip().splitlines()[-1] if out.strip() else "started")
            log(notes[-1])
        yield
    finally:
        if started_here:
            report.settle("engine stop", stop)


class Fleet:
    """The compose project: up, inspect, logs, down."""

    def __init__(self, image: str, compose_files: list[Path], certs: Path | None) -> None:
        self.compose_files = compose_files
        self.dashboard_port = free_port()
        self.token = secrets.token_hex(16)
        self.env = {
            **os.environ,
            "EDGEFED_IMAGE": image,
            "EDGEFED_DASHBOARD_TOKEN": self.token,
            "EDGEFED_BIND": "127.0.0.1",
            "EDGEFED_DASHBOARD_PORT": str(self.dashboard_port),
            "EDGEFED_SUPERLINK_PORT": str(free_port()),
            **({"EDGEFED_CERTS": str(certs)} if certs else {}),
        }

    def compose(self, *args: str, timeout: float, check: bool = True) -> str:
        files = [arg for path in self.compose_files for arg in ("--file", str(path))]
        return sh(["docker-compose", "--project-name", PROJECT, "--project-directory", str(ROOT),
                   *files, *args], timeout=timeout, env=self.env, check=check)

    def containers(self) -> list[dict]:
        ids = sh(["docker", "ps", "--all", "--quiet", "--filter",
                  f"label=com.docker.compose.project={PROJECT}"], timeout=30).split()
        return json.loads(sh(["docker", "inspect", *ids], timeout=60)) if ids else []

    def save_logs(self) -> None:
        logs = OUT / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for c in self.containers():
            name = c["Name"].lstrip("/")
            text = sh(["docker", "logs", "--tail", "300", c["Id"]], timeout=30, check=False)
            (logs / f"{name}.log").write_text(text)
        log(f"container logs in {logs}")

    def leftovers(self) -> dict[str, list[str]]:
        """Ids of the project's containers, networks and volumes, by kind (none when clean)."""
        label = f"label=com.docker.compose.project={PROJECT}"
        found = {kind: sh([*ls, "--filter", label], timeout=30).split()
                 for kind, ls in (("container", ["docker", "ps", "-aq"]),
                                  ("network", ["docker", "network", "ls", "-q"]),
                                  ("volume", ["docker", "volume", "ls", "-q"]))}
        return {kind: ids for kind, ids in found.items() if ids}

    def down(self, notes: list[str]) -> None:
        """``down -v``, then whatever is left of the project removed by id; :class:`Failed`
        if anything is still there afterwards."""
        try:
            self.compose("down", "--volumes", "--remove-orphans", "--timeout", "10",
                         timeout=240, check=False)
        except Failed as err:
            log(f"docker-compose down: {err}")
        for kind, ids in self.leftovers().items():
            force = ["--force"] if kind != "network" else []
            sh(["docker", kind, "rm", *force, *ids], timeout=120, check=False)
            notes.append(f"removed {len(ids)} leftover {kind}(s) by id")
        if left := self.leftovers():
            raise Failed(f"still there after removal: {left}")
        notes.append(f"no container, network or volume of {PROJECT} left")


def check_limits(
    containers: list[dict], catalogue: Catalogue, devices: list[DeviceProfile]
) -> str:
    """Each device's running app container is capped at its catalogue memory and CPUs."""
    apps = {int(c["Config"]["Labels"]["edgefed.partition-id"]): c for c in containers
            if c["Config"]["Labels"].get("edgefed.role") == "clientapp"}
    if sorted(apps) != list(range(len(devices))):
        raise Failed(f"app containers for partitions {sorted(apps)}, want 0..{len(devices) - 1}")
    for pid, c in sorted(apps.items()):
        device = catalogue.profile(c["Config"]["Labels"]["edgefed.device"])
        if device.name != devices[pid].name:
            raise Failed(f"partition {pid}: container runs {device.name}, fleet says "
                         f"{devices[pid].name}")
        memory, cpus = c["HostConfig"]["Memory"], c["HostConfig"]["NanoCpus"]
        if memory != device.ram_bytes or cpus != round(device.cpus * 1e9):
            raise Failed(f"{c['Name']}: Memory {memory}, NanoCpus {cpus}; catalogue "
                         f"{device.ram_bytes}, {device.cpus} CPUs")
    limits = sorted({d.ram_bytes for d in devices})
    if len(apps) < 8 or len(limits) < 3:
        raise Failed(f"want >= 8 devices with >= 3 memory limits, got {len(apps)} / {len(limits)}")
    return (f"{len(apps)} device containers capped as catalogued; limits (MiB): "
            f"{', '.join(f'{b / 2**20:.0f}' for b in limits)}")


def pick_seed(devices: list[DeviceProfile], rounds: int) -> int:
    """The first seed under which every device is online in every round, so that every device
    must answer (availability draws are deterministic per seed, round and partition)."""
    for seed in range(10_000):
        config_seed = ExperimentConfig.model_construct(seed=seed)
        if all(Node(pid, len(devices), d, "fit").available(config_seed, r)
               for pid, d in enumerate(devices) for r in range(1, rounds + 1)):
            return seed
    raise Failed("no seed keeps every device online")


def experiment(catalogue: Catalogue, seed: int) -> dict:
    """A 2-round, seconds-per-round experiment on the compose-test fleet."""
    fleet = [{"device": d, "count": n} for d, n in fleet_mix(FLEET, catalogue).items()]
    return ExperimentConfig(
        name="compose-e2e", model="smallcnn", width=0.5, image_size=28, fleet=fleet,
        rounds=ROUNDS, local_steps=1, batch_size=8, samples_per_client=16, test_samples=64,
        pretrain_epochs=0, min_train_clients=1, partitioner="iid", seed=seed,
        compression={"method": "hosvd", "last_k": 3, "eps": 0.8},
    ).model_dump(mode="json")


def starved(device: DeviceProfile) -> bool:
    """Too small for a Python + torch ClientApp (the catalogue says so in its description)."""
    return "too small" in device.description


def run_experiment(api: httpx.Client, config: dict, clock: Clock) -> dict:
    created = api.post("/api/experiments", json=config)
    if created.status_code != 201:
        raise Failed(f"create experiment: {created.status_code} {created.text[:500]}")
    launched = api.post(f"/api/experiments/{created.json()['id']}/launch",
                        json={"engine": "deployment"})
    if launched.status_code != 202:
        raise Failed(f"launch: {launched.status_code} {launched.text[:500]}")
    run_id = launched.json()["id"]
    log(f"run {run_id} launched")

    def finished() -> dict | None:
        detail = api.get(f"/api/runs/{run_id}").json()
        status = detail["run"]["status"]
        return detail if status not in ("queued", "running") else None

    detail = poll(f"run {run_id}", finished, clock, cap=1200, every=5)
    log(f"run {run_id}: {detail['run']['status']} ({detail['run']['message']})")
    return detail


def check_clients(detail: dict, devices: list[DeviceProfile]) -> str:
    """Every fitting device reported metrics each round; the starved one failed with a reason."""
    if detail["run"]["status"] != "finished":
        raise Failed(f"run ended {detail['run']['status']}: {detail['run']['message']}")
    rows = {(c["round"], c["partition_id"]): c for c in detail["clients"]
            if c["phase"] == "train"}
    for server_round in range(1, ROUNDS + 1):
        for pid, device in enumerate(devices):
            row = rows.get((server_round, pid))
            if row is None:
                raise Failed(f"round {server_round}: no row from partition {pid} ({device.name})")
            if starved(device):
                if row["status"] not in ("error", "oom") or not row["reason"]:
                    raise Failed(f"{device.name} (partition {pid}) should fail, got {row}")
                log(f"round {server_round}: {device.name} failed as expected: {row['reason']}")
            elif (row["status"] != "ok" or row["device"] != device.name
                  or row["peak_step_bytes"] is None or row["accuracy"] is None
                  or row["memory_limit_bytes"] != device.ram_bytes):  # its container's limit
                raise Failed(f"round {server_round}: partition {pid} ({device.name}): {row}")
    rounds = [r["round"] for r in detail["rounds"]]
    if rounds[-1:] != [ROUNDS]:
        raise Failed(f"global rounds recorded: {rounds}")
    ok = sum(r["status"] == "ok" for r in rows.values())
    return f"{len(rows)} per-client rows ({ok} ok) from {len(devices)} devices x {ROUNDS} rounds"


def peak_bytes(container: dict) -> int | None:
    """The highest memory usage of a container's cgroup-v1 memory group (page cache included)."""
    path = Path("/sys/fs/cgroup/memory/docker") / container["Id"] / "memory.max_usage_in_bytes"
    try:
        return int(path.read_text())
    except OSError:  # cgroup v2 or another cgroup parent: nothing to report
        return None


def check_survivors(containers: list[dict]) -> None:
    """App containers stayed up (a ClientApp may die, its container does not); report each
    device's measured peak against its limit."""
    for c in sorted(containers, key=lambda c: c["Name"]):
        if c["Config"]["Labels"].get("edgefed.role") != "clientapp":
            continue  # (the TLS overlay's one-shot `register` has exited, as it should)
        state, restarts = c["State"], c.get("RestartCount", 0)
        if restarts or not state["Running"]:
            raise Failed(f"{c['Name']} restarted {restarts} times, state {state['Status']}")
        peak = peak_bytes(c)
        if peak is not None:
            log(f"{c['Name'].lstrip('/')}: peak {peak / 2**20:.0f} MiB of "
                f"{c['HostConfig']['Memory'] / 2**20:.0f} MiB")


def run(args: argparse.Namespace, clock: Clock, report: Report) -> None:
    """Steps 1-6 of the module's docstring; :class:`Failed` at the first that does not hold."""
    catalogue = load_catalogue()
    devices = fleet_devices(FLEET, catalogue)
    OUT.mkdir(parents=True, exist_ok=True)
    compose_files = [OUT / "docker-compose.yml"]
    compose_files[0].write_text(generate_compose(FLEET, catalogue))
    certs = None
    if args.tls:
        compose_files.append(OUT / "docker-compose.tls.yml")
        compose_files[1].write_text(generate_tls_overlay(FLEET, catalogue))
        certs = OUT / "certs"
        shutil.rmtree(certs, ignore_errors=True)
        with report.step("certificates"):
            sh(["deploy/certs.sh", str(len(devices)), str(certs)], timeout=60)
    with engine(clock, report):
        with report.step("image") as notes:
            image = sh(["deploy/build-image.sh"], timeout=clock.left(15 * 60)).split()[-1]
            notes.append(image)
            log(f"image {image}")
        fleet = Fleet(image, compose_files, certs)
        with report.step("leftovers of earlier runs") as notes:
            fleet.down(notes)
        try:
            with report.step("fleet up") as notes:
                fleet.compose("up", "--detach", "--no-build", timeout=clock.left(600))
                notes.append(f"{len(fleet.containers())} containers")
                log(f"fleet up: {notes[-1]}")
            with report.step("limits") as notes:
                notes.append(check_limits(fleet.containers(), catalogue, devices))
                log(notes[-1])
            url = f"http://127.0.0.1:{fleet.dashboard_port}"
            with httpx.Client(base_url=url, timeout=30,
                              headers={"Authorization": f"Bearer {fleet.token}"}) as api:

                def dashboard_answers() -> bool | None:
                    try:
                        return api.get("/api/info").is_success or None
                    except httpx.HTTPError:
                        return None

                with report.step("dashboard"):
                    poll("dashboard", dashboard_answers, clock, cap=300)
                with report.step(f"{ROUNDS}-round run") as notes:
                    try:
                        detail = run_experiment(
                            api, experiment(catalogue, pick_seed(devices, ROUNDS)), clock)
                    except httpx.HTTPError as err:
                        raise Failed(f"dashboard API: {err!r}") from None
                    notes.append(f"{detail['run']['status']}: {detail['run']['message']}")
            with report.step("results") as notes:
                notes.append(check_clients(detail, devices))
                log(notes[-1])
                check_survivors(fleet.containers())
        except BaseException:
            with suppress(Failed):
                fleet.save_logs()
            raise
        finally:
            if not args.keep:
                report.settle("teardown", fleet.down)


def terminate(signum: int, _frame: object) -> None:
    """The first SIGTERM/SIGINT fails the run (so that teardown runs); later ones are ignored
    while it does."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Failed(f"interrupted by {signal.Signals(signum).name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=25 * 60, help="seconds for everything")
    parser.add_argument("--keep", action="store_true", help="leave the fleet up afterwards")
    parser.add_argument("--tls", action="store_true", help="with the TLS + SuperNode-auth overlay")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    report = Report()
    try:
        run(args, Clock(args.budget), report)
    except Failed as failure:
        report.problems.insert(0, str(failure))
    except Exception as exc:  # a bug here: still end with the summary
        report.problems.insert(0, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        print(report.summary(), flush=True)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
