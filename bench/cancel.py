"""Cancel benchmark: how long SIGTERM takes to stop a whole ``edgefed run`` during pretraining.

For each engine, ``--repeats`` times: start ``edgefed run`` from this checkout (2 devices, small
CNN, 30 pretraining epochs: never cached, a cancelled pretraining stores no checkpoint), wait
until the ServerApp reports a pretraining step, snapshot the run's process tree (SuperLink,
SuperNodes and app runtimes, ServerApp, Ray), send SIGTERM and time until the CLI has exited.
Every process of the snapshot must be gone by then. Prints a table with the load average and
writes ``bench/results/cancel.json``.

    python -m bench.cancel [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

from common.config import ExperimentConfig
from server.dashboard.runner import running
from server.report import read_events

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results") / "cancel.json"
PRETRAINING = "pretraining on the server's half: step"
START_TIMEOUT_S = 300.0


@dataclass
class Stop:
    """One cancelled run: seconds from SIGTERM to the CLI's exit, its exit code, the processes
    of the run (pid -> name, seen just before SIGTERM) and those still running after."""

    engine: str
    seconds: float
    exit_code: int
    processes: dict[int, str]
    left: list[str]
    load_average: float


def pretraining_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="cancel-bench", model="smallcnn", width=0.5, image_size=28, partitioner="iid",
        fleet=[{"device": "jetson-nano", "count": 2}], rounds=1, min_train_clients=1,
        local_steps=1, batch_size=8, samples_per_client=16, test_samples=64, pretrain_epochs=30,
    )


def _pretraining(out: Path) -> bool:
    return any(PRETRAINING in e.state.message for e in read_events(out)[0] if e.state)


def cancel_during_pretraining(engine: str, work: Path) -> Stop:
    """Run, SIGTERM during pretraining, measure (``work`` gets config, ``out/`` and the log)."""
    config = work / "config.json"
    config.write_text(pretraining_config().model_dump_json())
    out = work / "out"
    with (work / "cli.log").open("w") as log:
        cli = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-c", "from server.cli import app; app()", "run", str(config),
             "--out", str(out), "--engine", engine],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _pretraining(out):
            if cli.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no pretraining step; see {work / 'cli.log'}")
            time.sleep(0.2)
        tree = psutil.Process(cli.pid).children(recursive=True)
        names = {p.pid: p.name() for p in tree}
        sent = time.monotonic()
        cli.send_signal(signal.SIGTERM)
        code = cli.wait(30)
        seconds = time.monotonic() - sent
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
    return Stop(engine=engine, seconds=seconds, exit_code=code, processes=names,
                left=[names[p.pid] for p in running(tree)], load_average=os.getloadavg()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    stops = []
    for engine in ("simulation", "deployment"):
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="edgefed-cancel-") as work:
                stops.append(cancel_during_pretraining(engine, Path(work)))
    table = Table(title="SIGTERM during pretraining -> `edgefed run` exited")
    for column in ("engine", "stop s", "exit code", "processes", "left running", "load avg"):
        table.add_column(column)
    for s in stops:
        table.add_row(s.engine, f"{s.seconds:.2f}", str(s.exit_code), str(len(s.processes)),
                      ", ".join(s.left) or "none", f"{s.load_average:.1f}")
    Console().print(table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps([asdict(s) for s in stops], indent=2))


if __name__ == "__main__":
    main()
