"""Engines: run one experiment through ``flwr run`` on a SuperLink edgefed starts and stops.

- ``simulation``: ``flower-superlink --simulation`` (Flower's Simulation Engine, Ray) with
  ``num-supernodes`` = the fleet size; each virtual node's device comes from its partition id.
- ``deployment``: :func:`server.fleet.up` — a SuperLink and one memory-limited SuperNode process
  per device on loopback (Flower's Deployment Engine); or, when ``$EDGEFED_SUPERLINK`` names a
  running SuperLink (``host:port``, e.g. the compose fleet's), :func:`server.fleet.attach` to it
  (its SuperNodes are already there; a cancelled run is stopped with ``flwr stop``), over TLS
  when ``$EDGEFED_SUPERLINK_ROOT_CERTIFICATES`` names its CA certificate.

Either way the app is this repository (``flwr run <repo>``), the experiment travels as JSON in the
run-config, and the ServerApp writes events to ``<out>/events.jsonl``. ``flwr run`` exits 0 even
when the run fails, so the outcome is read with ``flwr list --run-id X --format json``. Everything
started here is stopped by pid in a ``finally`` block, including on SIGTERM/SIGINT (see
:func:`install_signal_handlers`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from common.config import Engine, ExperimentConfig
from common.devices import Catalogue, assign_devices, catalogue_path
from common.events import Event, RunState
from server import fleet, procs
from server.outcome import Verdict, judge
from server.report import Reporter, read_events

APP_DIR = Path(__file__).resolve().parents[1]
CONNECTION = "edgefed"
POLL_S = 1.0  # events file
STATUS_EVERY = 5  # ``flwr list`` (a CLI start costs CPU) every 5th poll
CLI_TIMEOUT_S = 120.0
LOG_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0  # SIGTERM -> SIGKILL once the run ended
# SIGTERM -> SIGKILL when cancelled: the whole stop must fit in 2 s, and the ServerApp
# (flwr-simulation, flwr-serverapp) and Ray's processes do not exit on SIGTERM within seconds
CANCEL_GRACE_S = 0.2


class RunCancelled(Exception):
    """Raised in the runner's thread when SIGTERM/SIGINT arrives."""


class OutDirInUse(ValueError):
    """The output folder already holds files (an earlier run's): runs never share one."""


SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_signal_handlers() -> None:
    """Turn the first SIGTERM or SIGINT into :class:`RunCancelled`, so ``finally`` blocks stop
    processes; later ones are ignored (the run is already stopping, its cleanup must finish)."""

    def cancel(signum: int, _frame: object) -> None:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise RunCancelled(signal.Signals(signum).name)

    for sig in SIGNALS:
        signal.signal(sig, cancel)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGINT back while a run's cleanup runs; one that arrived meanwhile is
    dropped: it asked to stop a run that is stopping anyway, whose outcome then stands."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        while signal.sigtimedwait(SIGNALS, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def check_out_dir(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that exists and is not an empty folder (:class:`OutDirInUse`).

    Refusing, rather than making a fresh sub-folder, keeps every path where the user said
    (``<out>/events.jsonl``) and never mixes or overwrites an earlier run's record."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutDirInUse(f"out: {out_dir} is not empty (it holds an earlier run's files); "
                          "name a new folder or remove that one")


@dataclass
class RunOutcome:
    """How a run ended: Flower's status, the verdict (:mod:`server.outcome`) whose state is the
    run's last event, and every event of this run."""

    status: str
    flwr_run_id: int | None
    events: list[Event] = field(default_factory=list)
    wall_s: float = 0.0
    verdict: Verdict | None = None

    @property
    def state(self) -> RunState:
        """The final state (``failed`` until a verdict was reached)."""
        return self.verdict.state if self.verdict else RunState(status="failed")


def run_config(
    config: ExperimentConfig, out_dir: Path, run_id: str, report_url: str, report_token: str
) -> dict[str, str]:
    """The ``[tool.flwr.app.config]`` values of one run (see pyproject.toml)."""
    return {
        "config-json": config.model_dump_json(),
        "run-id": run_id,
        "out-dir": str(out_dir.resolve()),
        "report-url": report_url,
        "report-token": report_token,
        "devices": str(catalogue_path().resolve()),
    }


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), also when it existed with
    a wider mode: never a moment where others could read it."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(text)


def write_connection(flwr_home: Path, address: str, root_certificates: str | None = None) -> None:
    """A Flower config whose default SuperLink connection is ours: TLS verified against
    ``root_certificates`` if given, else insecure."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = ({"root-certificates": root_certificates} if root_certificates
                else {"insecure": True})
    conf = {"superlink": {"default": CONNECTION, CONNECTION: {"address": address, **security}}}
    (flwr_home / "config.toml").write_text(tomli_w.dumps(conf))


def _flwr(args: list[str], env: dict[str, str], timeout: float = CLI_TIMEOUT_S) -> str:
    result = subprocess.run(  # noqa: S603 - fixed argv
        [procs.which("flwr"), *args],
        env=env, cwd=APP_DIR, capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"flwr {args[0]} failed: {result.stderr.strip() or result.stdout}")
    return result.stdout


def _json_tail(stdout: str) -> dict:
    """``flwr ... --format json`` prints one JSON document, possibly after notices."""
    return json.loads(stdout[stdout.index("{"):])


def submit(
    state: fleet.FleetState, overrides: Path, federation_config: dict[str, int] | None,
    app_dir: Path = APP_DIR,
) -> int:
    """``flwr run <app> edgefed --run-config FILE [--federation-config ...]`` -> Flower run id."""
    env = procs.flower_env(Path(state.flwr_home))
    write_connection(Path(state.flwr_home), state.address, state.root_certificates)
    args = ["run", str(app_dir), CONNECTION, "--run-config", str(overrides), "--format", "json"]
    if federation_config:
        pairs = " ".join(f"{k}={v}" for k, v in federation_config.items())
        args += ["--federation-config", pairs]
    payload = _json_tail(_flwr(args, env))
    if not payload.get("success"):
        raise RuntimeError(f"flwr run did not start the run: {payload}")
    return int(payload["run-id"])


def flower_status(state: fleet.FleetState, flwr_run_id: int) -> str:
    """The run's status from ``flwr list``: ``pending``, ``running``, ``finished:completed``,
    ``finished:failed``, ``finished:stopped`` ..."""
    env = procs.flower_env(Path(state.flwr_home))
    payload = _json_tail(_flwr(["list", CONNECTION, "--run-id", str(flwr_run_id),
                                "--format", "json"], env))
    runs = payload.get("runs") or []
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def save_run_log(state: fleet.FleetState, flwr_run_id: int, path: Path) -> None:
    """The run's ServerApp/ClientApp log (``flwr log RUN_ID --show``), kept for post-mortems."""
    try:
        path.write_text(_flwr(["log", str(flwr_run_id), CONNECTION, "--show"],
                              procs.flower_env(Path(state.flwr_home)), timeout=LOG_TIMEOUT_S))
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as err:
        path.write_text(f"could not fetch the run's log: {err}\n")


def stop_run(state: fleet.FleetState, flwr_run_id: int) -> None:
    """``flwr stop``: a run on a SuperLink edgefed did not start outlives our processes."""
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired, OSError):  # best effort
        _flwr(["stop", str(flwr_run_id), CONNECTION], procs.flower_env(Path(state.flwr_home)),
              timeout=LOG_TIMEOUT_S)


def simulation_resources(num_clients: int) -> dict[str, int]:
    """Federation config of the Simulation Engine: one CPU per virtual client, all cores."""
    return {
        "num-supernodes": num_clients,
        "client-resources-num-cpus": 1,
        "init-args-num-cpus": os.cpu_count() or 1,
    }


def run(
    config: ExperimentConfig,
    catalogue: Catalogue,
    engine: Engine,
    out_dir: Path,
    run_id: str,
    report_url: str = "",
    report_token: str = "",
    on_event: Callable[[Event], None] | None = None,
    on_started: Callable[[fleet.FleetState], None] | None = None,
) -> RunOutcome:
    """Run ``config`` on ``engine`` to completion; always stops every process it started.

    ``out_dir`` must be new or empty (:func:`check_out_dir`). Run states are reported here:
    ``running`` first, and last the verdict (finished, possibly degraded / failed, see
    :func:`server.outcome.judge`) or ``cancelled``, written only once every process of the run
    is stopped, so nothing follows it. Per-client and per-round events come from the ServerApp
    through the same ``events.jsonl`` and URL. ``on_started`` sees the SuperLink (and fleet)
    once they run. On SIGTERM/SIGINT (:func:`install_signal_handlers`) the processes get
    :data:`CANCEL_GRACE_S` before SIGKILL and :class:`RunCancelled` is re-raised.
    """
    devices = assign_devices(config.fleet, catalogue)
    check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(config.model_dump_json(indent=2))
    reporter = Reporter(run_id, out_dir, report_url, report_token)
    overrides = out_dir / "run-config.toml"  # holds the report token
    write_private(overrides, tomli_w.dumps(run_config(config, out_dir, run_id, report_url,
                                                      report_token)))
    procs.become_subreaper()
    children_before = {p.pid for p in procs.new_children(set())}
    flower_dir = out_dir / fleet.RUN_DIR
    started = time.monotonic()
    outcome = RunOutcome(status="failed", flwr_run_id=None)
    tail = EventTail(out_dir, run_id, outcome, on_event)
    state: fleet.FleetState | None = None
    stopped: RunState | None = None  # how it ended when Flower could not say
    warning = None
    try:
        reporter.emit(state=RunState(status="running", message=f"engine={engine}"))
        if engine == "simulation":
            state = fleet.start_superlink(flower_dir, simulation=True)
            resources = simulation_resources(len(devices))
        elif attach_to := os.environ.get(fleet.SUPERLINK_ENV):
            state = fleet.attach(flower_dir, attach_to,
                                 os.environ.get(fleet.ROOT_CERTIFICATES_ENV) or None)
            resources = None
        else:
            state = fleet.up(flower_dir, devices)
            resources = None
            if warning := fleet.limit_warning(state):
                reporter.emit(state=RunState(status="running", message=warning))
        if on_started is not None:
            on_started(state)
        outcome.flwr_run_id = submit(state, overrides, resources)
        outcome.status = _follow(state, outcome, tail, config.rounds)
    except RunCancelled as why:
        outcome.status = "cancelled"
        stopped = RunState(status="cancelled", message=f"received {why}")
        raise
    except BaseException as err:
        stopped = RunState(status="failed", message=str(err)[:4000] or type(err).__name__)
        raise
    finally:
        with signals_deferred():
            _shut_down(state, outcome, flower_dir, children_before)
            tail.poll()  # what the ServerApp wrote before it stopped
            outcome.verdict = (Verdict(stopped, ()) if stopped
                               else judge(outcome.status, outcome.events, config.rounds))
            final = outcome.verdict.state
            if warning:
                final = final.model_copy(update={"message": f"{final.message}; {warning}"[:4000]})
                outcome.verdict = Verdict(final, outcome.verdict.empty_rounds)
            outcome.events.append(reporter.emit(state=final))
            reporter.close()
            outcome.wall_s = time.monotonic() - started
    return outcome


def _shut_down(state: fleet.FleetState | None, outcome: RunOutcome, flower_dir: Path,
               children_before: set[int]) -> None:
    """Stop the run's processes, cgroups included, and whatever it left re-parented to us
    (also when the fleet failed half-way up): SIGKILL after :data:`CANCEL_GRACE_S` when
    cancelled. The run's Flower log is kept first, unless cancelled (fetching it takes a CLI
    start)."""
    cancelled = outcome.status == "cancelled"
    state = state or fleet.load(flower_dir)  # fleet.up records each node as it starts it
    if state is not None and outcome.flwr_run_id is not None:
        if cancelled and state.superlink is None:
            stop_run(state, outcome.flwr_run_id)
        elif not cancelled:
            save_run_log(state, outcome.flwr_run_id, flower_dir / "run.log")
    procs.stop(state.processes if state is not None else [],
               extra=procs.new_children(children_before), timeout=STOP_TIMEOUT_S,
               grace=CANCEL_GRACE_S if cancelled else None)
    (flower_dir / fleet.STATE_FILE).unlink(missing_ok=True)


class EventTail:
    """Hands this run's new events in ``events.jsonl`` to the outcome and ``on_event``; lines of
    any other run id are skipped."""

    def __init__(self, out_dir: Path, run_id: str, outcome: RunOutcome,
                 on_event: Callable[[Event], None] | None) -> None:
        self.out_dir, self.run_id, self.outcome, self.on_event = out_dir, run_id, outcome, on_event
        self.offset = 0

    def poll(self) -> None:
        events, self.offset = read_events(self.out_dir, self.offset)
        for event in events:
            if event.run_id != self.run_id:
                continue
            self.outcome.events.append(event)
            if self.on_event is not None:
                self.on_event(event)


def _follow(state: fleet.FleetState, outcome: RunOutcome, tail: EventTail, rounds: int) -> str:
    """Stream new events until Flower reports the run finished; returns its final status.

    Flower's status (a ``flwr list`` CLI start) is asked every ``STATUS_EVERY``-th poll, and at
    every poll once round ``rounds`` has its result: the ServerApp is then about to end."""
    status = "pending"
    tick = 0
    while True:
        tick += 1
        tail.poll()
        if status.startswith("finished"):
            return status
        if state.superlink is not None and not state.superlink.alive():
            return "finished:failed (superlink exited)"
        time.sleep(POLL_S)
        last_round_in = any(e.round is not None and e.round.round >= rounds
                            for e in outcome.events)
        if tick % STATUS_EVERY == 0 or last_round_in:
            status = flower_status(state, outcome.flwr_run_id)
