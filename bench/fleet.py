"""Fleet benchmark: 1,000 virtual clients, 50 sampled per round, 3 rounds, default model.

Runs the same workload twice on Flower's Simulation Engine, one after the other, in this process:

- edgefed: ``server.runner.run`` (device profiles, availability, budget planner, measured first
  step, FLOP counting, HOSVD-compressed backprop, per-client events);
- plain Flower FedAvg (``bench/plainfl``): the same model, partitions, local steps, batch and
  central evaluation, every client fine-tuning the last ``last_k`` layers with plain autograd,
  on one torch thread as edgefed's devices (otherwise two actors' OpenMP threads oversubscribe
  the cores and the ratio measures that, not edgefed's logic).

Round time = time between consecutive central evaluations (round r ends when the global model of
round r is evaluated), so pretraining, node registration and edgefed's inventory are excluded.
Peak memory = the largest summed RSS of the SuperLink's process tree (SuperLink, simulation
runtime with the ServerApp, Ray and its actors), sampled every 0.5 s. Prints a table and writes
``bench/results/fleet.json``; ratio = edgefed mean round time / plain mean round time.

    python -m bench.fleet [--clients 1000] [--sampled 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import tomli_w
from rich.console import Console
from rich.table import Table

from common.config import ExperimentConfig
from common.devices import load_catalogue
from server import fleet, procs, runner

RESULTS = Path(__file__).resolve().parent / "results"
PLAIN_APP = Path(__file__).resolve().parent / "plainfl"


class PeakRss:
    """Samples the summed RSS of a process tree in a thread; ``peak`` in bytes."""

    def __init__(self, root_pid_of: Callable[[], int | None]) -> None:
        self.root_pid_of = root_pid_of
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            pid = self.root_pid_of()
            if pid is None:
                continue
            try:
                root = psutil.Process(pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0
            for proc in tree:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
            self.peak = max(self.peak, total)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def workload(clients: int, sampled: int, rounds: int) -> ExperimentConfig:
    """The default model on a fleet of ``clients`` phones and Pis, ``sampled`` per round; each
    client trains one local epoch in batches of 16 over its partition (1,000 partitions of the
    30,000-image client half: about 30 images, 2 steps)."""
    per_kind = clients // 4
    fleet_mix = [{"device": d, "count": per_kind} for d in ("rpi-zero", "rpi5", "jetson-nano")]
    fleet_mix.append({"device": "phone", "count": clients - 3 * per_kind})
    return ExperimentConfig(
        name="bench-fleet", fleet=fleet_mix, rounds=rounds, fraction_train=sampled / clients,
        min_train_clients=sampled, local_steps=8, batch_size=16, samples_per_client=128,
        test_samples=500, partitioner="iid", pretrain_epochs=1, pretrain_samples=6000,
    )


def _round_times(stamps: list[tuple[int, float]]) -> list[float]:
    stamps = sorted(stamps)
    return [b[1] - a[1] for a, b in zip(stamps, stamps[1:], strict=False)]


def run_edgefed(config: ExperimentConfig, out: Path) -> dict:
    started: list[fleet.FleetState] = []
    with PeakRss(lambda: started[0].superlink.pid if started else None) as rss:
        outcome = runner.run(config, load_catalogue(), "simulation", out, "bench-edgefed",
                             on_started=started.append)
    rounds = [e.round for e in outcome.events if e.round is not None]
    stamps = [(r.round, e.ts) for e, r in ((e, e.round) for e in outcome.events if e.round)]
    return {"status": outcome.status, "round_s": _round_times(stamps), "peak_rss": rss.peak,
            "accuracy": [r.accuracy for r in rounds]}


def run_plain(config: ExperimentConfig, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    overrides = out / "run-config.toml"
    overrides.write_text(tomli_w.dumps({"config-json": config.model_dump_json(),
                                        "out-dir": str(out.resolve())}))
    procs.become_subreaper()
    state = fleet.start_superlink(out / "flower", simulation=True)
    try:
        with PeakRss(lambda: state.superlink.pid) as rss:
            run_id = runner.submit(state, overrides, runner.simulation_resources(
                config.num_clients), app_dir=PLAIN_APP)
            status = "pending"
            while not status.startswith("finished"):
                time.sleep(5)
                status = runner.flower_status(state, run_id)
    finally:
        procs.stop(state.processes)
    stamps = json.loads((out / "rounds.json").read_text())
    return {"status": status, "round_s": _round_times([(s["round"], s["ts"]) for s in stamps]),
            "peak_rss": rss.peak, "accuracy": [s["accuracy"] for s in stamps]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--sampled", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config = workload(args.clients, args.sampled, args.rounds)
    work = Path("runs") / f"bench-fleet-{int(time.time())}"
    results = {"edgefed": run_edgefed(config, work / "edgefed"),
               "plain": run_plain(config, work / "plain")}
    mean = {k: statistics.mean(v["round_s"]) for k, v in results.items()}
    ratio = mean["edgefed"] / mean["plain"]
    # round 1 also pays for starting the Ray actors and importing torch there
    steady = {k: statistics.mean(v["round_s"][1:]) for k, v in results.items()
              if len(v["round_s"]) > 1}
    steady_ratio = steady["edgefed"] / steady["plain"] if len(steady) == 2 else None
    table = Table(title=f"{args.clients} clients, {args.sampled} per round, {args.rounds} rounds, "
                        f"{config.model} x{config.width}")
    for column in ("system", "status", "round times (s)", "mean round (s)", "peak RSS (MiB)",
                   "test accuracy"):
        table.add_column(column)
    for name, r in results.items():
        table.add_row(name, r["status"], ", ".join(f"{t:.1f}" for t in r["round_s"]),
                      f"{mean[name]:.1f}", f"{r['peak_rss'] / 2**20:,.0f}",
                      " -> ".join(f"{a:.3f}" for a in r["accuracy"]))
    console = Console(width=140)
    console.print(table)
    console.print(f"round-time ratio edgefed / plain Flower: {ratio:.2f}x over all rounds"
                  + (f", {steady_ratio:.2f}x after round 1" if steady_ratio else "")
                  + " (target <= 1.25x)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"clients": args.clients, "sampled": args.sampled, "rounds": args.rounds,
               "config": json.loads(config.model_dump_json()), "results": results,
               "mean_round_s": mean, "ratio": ratio, "steady_round_s": steady,
               "steady_ratio": steady_ratio}
    (RESULTS / "fleet.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
