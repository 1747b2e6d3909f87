"""Fleet benchmark: edgefed against plain Flower FedAvg on the same workload, in one invocation.

Both run on Flower's Simulation Engine, one after the other in this process, ``--repeats``
times in alternating order (edgefed, plain, plain, edgefed, ...) so that a shared machine's
load drifts over both alike:

- edgefed: ``server.runner.run`` (device profiles, availability, budget planner, measured first
  step, FLOP counting, HOSVD-compressed backprop, per-client events);
- plain Flower FedAvg (``bench/plainfl``): the same model, partitions, local steps, batch and
  central evaluation, every client fine-tuning the last ``last_k`` layers with plain autograd,
  on one torch thread as edgefed's devices (otherwise two actors' OpenMP threads oversubscribe
  the cores and the ratio measures that, not edgefed's logic).

Round time = time between consecutive central evaluations (round r ends when the global model of
round r is evaluated), so pretraining, node registration and edgefed's inventory are excluded.
Round CPU = CPU seconds (user + system) that the SuperLink's process tree (SuperLink, simulation
runtime with the ServerApp, Ray and its actors) spent in that interval: the sum over every
process ever seen in the tree of its latest CPU times, sampled every ``SAMPLE_S`` and
interpolated linearly at the round's end stamps. CPU time is less sensitive than wall time to
the other work on a shared machine (it still grows a little with cache and frequency contention).
Peak memory = the largest summed RSS of that tree. Load = ``os.getloadavg()`` (1-minute),
sampled with them; the table gives its mean over each run.

Round 1 also pays for starting the Ray actors, importing torch and (edgefed) the planner's first
measurements there, so the steady state is the mean over rounds 2..R. Ratios are edgefed / plain
of those means, pooled over the repeats. Prints a table and writes ``bench/results/fleet.json``.

    python -m bench.fleet [--clients 1000] [--sampled 50] [--rounds 6] [--repeats 1]
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
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
SAMPLE_S = 0.25
STEADY_TARGET = 1.1


def process_group(proc: psutil.Process) -> str:
    """Which part of a simulation a process of the SuperLink's tree is: ``actors`` (Ray workers
    running ClientApps), ``serverapp`` (the simulation runtime: ServerApp and Simulation
    Engine), ``superlink`` or ``ray`` (Ray's own daemons)."""
    cmdline = " ".join(proc.cmdline())
    if cmdline.startswith("ray::") or "default_worker.py" in cmdline:
        return "actors"
    if "flwr-simulation" in cmdline or "flwr-serverapp" in cmdline:
        return "serverapp"
    if "flower-superlink" in cmdline:
        return "superlink"
    return "ray"


GROUPS = ("actors", "serverapp", "superlink", "ray")


class TreeSampler:
    """Samples a process tree in a thread: summed RSS (``peak`` in bytes), cumulative CPU
    seconds per :func:`process_group` (:meth:`cpu_at`) and the 1-minute load average
    (``loads``)."""

    def __init__(self, root_pid_of: Callable[[], int | None]) -> None:
        self.root_pid_of = root_pid_of
        self.peak = 0
        self.loads: list[float] = []
        self._cpu_of: dict[int, tuple[str, float]] = {}  # pid -> (group, user + system s)
        self._stamps: list[float] = []
        self._cpu: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        pid = self.root_pid_of()
        if pid is None:
            return
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss = 0
        for proc in tree:
            with contextlib.suppress(psutil.Error), proc.oneshot():
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                group = self._cpu_of.get(proc.pid, (None, 0.0))[0] or process_group(proc)
                self._cpu_of[proc.pid] = (group, times.user + times.system)
        self.peak = max(self.peak, rss)
        totals = dict.fromkeys(GROUPS, 0.0)
        for group, seconds in self._cpu_of.values():
            totals[group] += seconds
        self._stamps.append(time.time())
        self._cpu.append(totals)
        self.loads.append(os.getloadavg()[0])

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def cpu_at(self, ts: float, group: str | None = None) -> float:
        """Cumulative CPU seconds of the tree (or of one group) at wall time ``ts``, linear
        between samples."""
        if not self._stamps:
            raise ValueError("cpu_at: no samples taken")
        series = [sum(c.values()) if group is None else c[group] for c in self._cpu]
        i = bisect.bisect_left(self._stamps, ts)
        if i == 0:
            return series[0]
        if i == len(self._stamps):
            return series[-1]
        t0, t1 = self._stamps[i - 1], self._stamps[i]
        return series[i - 1] + (series[i] - series[i - 1]) * (ts - t0) / (t1 - t0)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def workload(clients: int, sampled: int, rounds: int) -> ExperimentConfig:
    """The default model on a fleet of ``clients`` phones and Pis, ``sampled`` per round; each
    client trains one local epoch in batches of 16 over its partition (1,000 partitions of the
    30,000-image client half: about 30 images, 2 steps; at most 8 steps of 128 images)."""
    per_kind = clients // 4
    fleet_mix = [{"device": d, "count": per_kind} for d in ("rpi-zero", "rpi5", "jetson-nano")]
    fleet_mix.append({"device": "phone", "count": clients - 3 * per_kind})
    return ExperimentConfig(
        name="bench-fleet", fleet=fleet_mix, rounds=rounds, fraction_train=sampled / clients,
        min_train_clients=sampled, local_steps=8, batch_size=16, samples_per_client=128,
        test_samples=500, partitioner="iid", pretrain_epochs=1, pretrain_samples=6000,
    )


def per_round(stamps: list[tuple[int, float]], sampler: TreeSampler) -> dict[str, list[float]]:
    """Wall seconds and CPU seconds of the tree (in all and per process group) of each round,
    from the (round, time) stamps of the central evaluations (round 0: the pretrained model)."""
    stamps = sorted(stamps)
    pairs = list(zip(stamps, stamps[1:], strict=False))
    return {"round_s": [b - a for (_, a), (_, b) in pairs],
            "round_cpu_s": [sampler.cpu_at(b) - sampler.cpu_at(a) for (_, a), (_, b) in pairs],
            "round_cpu_by_group_s": {
                g: [sampler.cpu_at(b, g) - sampler.cpu_at(a, g) for (_, a), (_, b) in pairs]
                for g in GROUPS}}


def _summary(status: str, stamps: list[tuple[int, float]], sampler: TreeSampler,
             accuracy: list[float]) -> dict:
    loads = sampler.loads or [os.getloadavg()[0]]
    return {"status": status, **per_round(stamps, sampler), "peak_rss": sampler.peak,
            "load_mean": statistics.mean(loads), "load_max": max(loads), "accuracy": accuracy}


def run_edgefed(config: ExperimentConfig, out: Path) -> dict:
    started: list[fleet.FleetState] = []
    with TreeSampler(lambda: started[0].superlink.pid if started else None) as sampler:
        outcome = runner.run(config, load_catalogue(), "simulation", out, "bench-edgefed",
                             on_started=started.append)
    rounds = [e.round for e in outcome.events if e.round is not None]
    stamps = [(e.round.round, e.ts) for e in outcome.events if e.round is not None]
    return _summary(outcome.status, stamps, sampler, [r.accuracy for r in rounds])


def run_plain(config: ExperimentConfig, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    overrides = out / "run-config.toml"
    overrides.write_text(tomli_w.dumps({"config-json": config.model_dump_json(),
                                        "out-dir": str(out.resolve())}))
    procs.become_subreaper()
    state = fleet.start_superlink(out / "flower", simulation=True)
    try:
        with TreeSampler(lambda: state.superlink.pid) as sampler:
            run_id = runner.submit(state, overrides, runner.simulation_resources(
                config.num_clients), app_dir=PLAIN_APP)
            status = "pending"
            while not status.startswith("finished"):
                time.sleep(5)
                status = runner.flower_status(state, run_id)
    finally:
        procs.stop(state.processes)
    rounds = json.loads((out / "rounds.json").read_text())
    return _summary(status, [(s["round"], s["ts"]) for s in rounds], sampler,
                    [s["accuracy"] for s in rounds])


RUNNERS = {"edgefed": run_edgefed, "plain": run_plain}


def schedule(repeats: int) -> list[str]:
    """edgefed, plain, then plain, edgefed, ...: each system runs first in half the pairs."""
    pair = ["edgefed", "plain"]
    return [name for i in range(repeats) for name in (pair if i % 2 == 0 else pair[::-1])]


def steady(runs: list[dict], key: str, group: str | None = None) -> float:
    """Mean of ``key`` (of ``group`` in ``round_cpu_by_group_s``) over rounds 2..R of every
    run (round 1 is the warm-up)."""
    values = [v for run in runs
              for v in (run[key] if group is None else run[key][group])[1:]]
    if not values:
        raise ValueError("rounds: need at least 2 rounds for a steady-state figure")
    return statistics.mean(values)


def pair_ratios(runs: list[tuple[str, dict]], key: str = "round_s") -> list[float]:
    """edgefed / plain of ``steady(key)`` within each consecutive pair of ``schedule``'s runs:
    the spread shows how much one slow stretch of a shared machine moves the pooled ratio."""
    pairs = [dict(runs[i:i + 2]) for i in range(0, len(runs) - 1, 2)]
    return [steady([p["edgefed"]], key) / steady([p["plain"]], key) for p in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--sampled", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds: need at least 2 (round 1 is the warm-up)")
    config = workload(args.clients, args.sampled, args.rounds)
    work = Path("runs") / f"bench-fleet-{int(time.time())}"
    runs: list[tuple[str, dict]] = []
    for i, name in enumerate(schedule(args.repeats)):
        runs.append((name, RUNNERS[name](config, work / f"{i}-{name}")))
    by_system = {name: [r for n, r in runs if n == name] for name in RUNNERS}
    wall = {name: steady(rs, "round_s") for name, rs in by_system.items()}
    cpu = {name: steady(rs, "round_cpu_s") for name, rs in by_system.items()}
    ratio_wall, ratio_cpu = wall["edgefed"] / wall["plain"], cpu["edgefed"] / cpu["plain"]
    cpu_groups = {name: {g: steady(rs, "round_cpu_by_group_s", g) for g in GROUPS}
                  for name, rs in by_system.items()}
    pairs = pair_ratios(runs)

    table = Table(title=f"{args.clients} clients, {args.sampled} per round, {args.rounds} rounds, "
                        f"{config.model} x{config.width}, {len(runs)} runs in this order")
    for column in ("system", "status", "round wall (s)", "round CPU (s)", "steady wall / CPU",
                   "load mean/max", "peak RSS (MiB)", "test accuracy"):
        table.add_column(column)
    for name, r in runs:
        table.add_row(name, r["status"], " ".join(f"{t:.1f}" for t in r["round_s"]),
                      " ".join(f"{t:.1f}" for t in r["round_cpu_s"]),
                      f"{statistics.mean(r['round_s'][1:]):.2f} / "
                      f"{statistics.mean(r['round_cpu_s'][1:]):.2f}",
                      f"{r['load_mean']:.1f}/{r['load_max']:.1f}", f"{r['peak_rss'] / 2**20:,.0f}",
                      " -> ".join(f"{a:.3f}" for a in r["accuracy"]))
    console = Console(width=160)
    console.print(table)
    console.print(f"after round 1, edgefed / plain Flower: wall {ratio_wall:.2f}x "
                  f"({wall['edgefed']:.2f} / {wall['plain']:.2f} s per round), CPU "
                  f"{ratio_cpu:.2f}x ({cpu['edgefed']:.2f} / {cpu['plain']:.2f} s per round); "
                  f"target <= {STEADY_TARGET}x; wall ratio of each pair: "
                  + ", ".join(f"{r:.2f}x" for r in pairs))
    console.print("CPU s per round after round 1 by process group, edgefed / plain: " + ", ".join(
        f"{g} {cpu_groups['edgefed'][g]:.2f} / {cpu_groups['plain'][g]:.2f}" for g in GROUPS))
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"clients": args.clients, "sampled": args.sampled, "rounds": args.rounds,
               "repeats": args.repeats, "config": json.loads(config.model_dump_json()),
               "runs": [{"system": name, **r} for name, r in runs],
               "steady_round_s": wall, "steady_round_cpu_s": cpu,
               "steady_round_cpu_by_group_s": cpu_groups,
               "steady_ratio_wall": ratio_wall, "steady_ratio_cpu": ratio_cpu,
               "pair_ratios_wall": pairs, "target": STEADY_TARGET}
    (RESULTS / "fleet.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
