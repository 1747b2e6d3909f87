"""Dashboard under load: 100 concurrent readers of a run's page and API while the run streams.

A real dashboard process (``python -m server.dashboard``, SQLite in WAL mode, 127.0.0.1) holds
one attached run of ``--clients`` clients. A producer POSTs that run's events at a steady
``--rate`` (client results, then the round's global metrics, round after round) through the
ingestion endpoint; ``--readers`` asynchronous httpx readers each loop over what a person with
the run page open causes (the page, its script, the run snapshot, rounds, per-client rows of a
round, the run list, the comparison), pausing ``--think`` seconds (+-50 % jitter) between
requests; ``--streams`` more hold the live event stream open and time each event's delivery.
The readers are spread over ``--procs`` processes so that the load generator, not the server,
is never what waits for a CPU.

Reported: request latency p50/p90/p99/max per request kind and overall as the readers see it,
the time spent inside the server (its ``Server-Timing`` header), errors (non-2xx/304 or
transport), ingestion latency, stream delivery delay, CPU time of the server and of the
readers, and the machine's load average (on a shared machine latency is mostly waiting for a
CPU). Table on stdout, numbers in bench/results/dashboard.json. Target: overall p99 <= 150 ms,
no errors.

    python -m bench.dashboard [--readers 100] [--procs 4] [--duration 60] [--rate 20]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import psutil
import uvloop

from tests.dashboard_support import DashboardProcess, tiny_config

RESULTS = Path(__file__).with_name("results") / "dashboard.json"
_round = None  # the producer's current round, shared with reader processes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(latencies_s: list[float]) -> dict[str, float]:
    ms = [1000 * x for x in latencies_s] or [float("nan")]
    return {"n": len(latencies_s), "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99), "max_ms": max(ms), "mean_ms": statistics.fmean(ms)}


def client_events(run_id: str, r: int, clients: int) -> list[dict]:
    """One round as a ServerApp reports it: every client's result, then the global metrics."""
    events = [{"run_id": run_id, "client": {
        "round": r, "node_id": 10_000 + p, "partition_id": p, "device": "rpi5",
        "status": "oom" if p % 7 == 0 else "ok", "num_examples": 128, "train_loss": 1.0 / r,
        "accuracy": 0.5 + 0.4 * (1 - 1 / r), "activation_bytes": 2_000_000 + p,
        "compressed_bytes": 300_000 + p, "training_bytes": 4_000_000 + p,
        "peak_step_bytes": 6_000_000 + 1000 * p,
        "total_bytes": 7_000_000 + p, "budget_bytes": 64 * 2**20, "method": "hosvd",
        "last_k": 4, "eps": 0.8, "ranks": [[4, 8, 3, 3]] * 4, "batch_size": 32,
        "wall_s": 1.5, "sim_time_s": 3.2,
    }} for p in range(clients)]
    return [*events, {"run_id": run_id, "round": {
        "round": r, "accuracy": 0.5 + 0.4 * (1 - 1 / r), "loss": 1.0 / r, "num_ok": clients}}]


async def produce(client: httpx.AsyncClient, attached: dict, args: argparse.Namespace,
                  until: float, ingest: list[float], errors: list[str]) -> None:
    """Events at a steady rate until ``until`` (wall clock)."""
    headers = {"Authorization": f"Bearer {attached['report_token']}"}
    start, sent, r = time.perf_counter(), 0, 1
    while time.time() < until:
        for event in client_events(attached["run"]["id"], r, args.clients):
            await asyncio.sleep(max(0.0, start + sent / args.rate - time.perf_counter()))
            if time.time() >= until:
                return
            t = time.perf_counter()
            try:
                response = await client.post(attached["report_url"], headers=headers,
                                             json={**event, "ts": time.time()})
                if response.status_code != 201:
                    errors.append(f"ingest {response.status_code}")
            except httpx.HTTPError as error:
                errors.append(f"ingest {type(error).__name__}")
            ingest.append(time.perf_counter() - t)
            sent += 1
        _round.value = r
        r += 1


async def listen(client: httpx.AsyncClient, base: str, run: dict, until: float,
                 delays: list[float], errors: list[str]) -> None:
    """Hold the live stream open; delay = arrival time - the producer's timestamp."""
    try:
        async with client.stream("GET", f"{base}/api/runs/{run['id']}/stream",
                                 params={"after": run["last_event_id"]}) as response:
            async for line in response.aiter_lines():
                if time.time() >= until:
                    return
                if line.startswith("data: ") and '"client"' in line:
                    delays.append(time.time() - json.loads(line[6:])["ts"])
    except httpx.HTTPError as error:
        errors.append(f"stream {type(error).__name__}")


def server_time(response: httpx.Response) -> float:
    """Seconds the server says it spent (its ``Server-Timing: app;dur=MS`` header)."""
    return float(response.headers["server-timing"].split("dur=")[1]) / 1000


async def read(client: httpx.AsyncClient, base: str, run_id: str, think: float, start: float,
               until: float, latencies: dict[str, list[float]], errors: list[str]) -> None:
    """One person with the run page open: page loads and API reads in a loop."""
    kinds = {
        "page": lambda: f"/runs/{run_id}", "script": lambda: "/static/run.js",
        "snapshot": lambda: f"/api/runs/{run_id}", "rounds": lambda: f"/api/runs/{run_id}/rounds",
        "clients": lambda: f"/api/runs/{run_id}/clients?round={_round.value}",
        "runs": lambda: "/api/runs", "compare": lambda: f"/api/compare?run={run_id}",
    }
    order = random.sample(list(kinds), len(kinds))
    await asyncio.sleep(max(0.0, start - time.time()) + random.uniform(0, think))
    i = 0
    while time.time() < until:
        kind = order[i % len(order)]
        t = time.perf_counter()
        try:
            response = await client.get(base + kinds[kind]())
            if response.status_code not in (200, 304):
                errors.append(f"{kind} {response.status_code}")
            latencies[f"server:{kind}"].append(server_time(response))
        except httpx.HTTPError as error:
            errors.append(f"{kind} {type(error).__name__}")
        latencies[kind].append(time.perf_counter() - t)
        i += 1
        await asyncio.sleep(think * random.uniform(0.5, 1.5))


def _share(value) -> None:
    global _round
    _round = value


def reader_process(base: str, run_id: str, readers: int, think: float, start: float,
                   until: float) -> tuple[dict[str, list[float]], list[str], float]:
    """``readers`` reader tasks in this process; their latencies, errors and CPU seconds."""
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []

    async def main() -> None:
        limits = httpx.Limits(max_connections=readers + 1)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            await asyncio.gather(*(read(client, base, run_id, think, start, until, latencies,
                                        errors) for _ in range(readers)))

    gc.collect()
    gc.freeze()  # a full collection of the imports paused readers 50-75 ms: not the server's
    cpu = time.process_time()
    uvloop.run(main())  # the readers' own loop overhead is not the server's latency
    return dict(latencies), errors, time.process_time() - cpu


async def produce_and_listen(base: str, attached: dict, args: argparse.Namespace, start: float,
                             until: float, server: psutil.Process) -> dict:
    ingest: list[float] = []
    delays: list[float] = []
    errors: list[str] = []
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=args.streams + 5),
                                 timeout=30) as client:
        await asyncio.sleep(max(0.0, start - time.time()))
        cpu0, load0 = server.cpu_times(), os.getloadavg()
        await asyncio.gather(produce(client, attached, args, until, ingest, errors),
                             *(listen(client, base, attached["run"], until, delays, errors)
                               for _ in range(args.streams)))
        cpu1, load1 = server.cpu_times(), os.getloadavg()
        stored = (await client.get(f"{base}/api/runs/{attached['run']['id']}")).json()
    return {"ingest": ingest, "delays": delays, "errors": errors, "stored": stored,
            "server_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "load": (load0[0], load1[0])}


def bench(base: str, server: psutil.Process, args: argparse.Namespace) -> dict:
    config = tiny_config(name="bench", fleet=[{"device": "rpi5", "count": args.clients}],
                         rounds=500)
    experiment = httpx.post(f"{base}/api/experiments", json=config).json()
    attached = httpx.post(f"{base}/api/experiments/{experiment['id']}/attach").json()
    shared = multiprocessing.get_context("spawn").Value("i", 1)
    _share(shared)
    start = time.time() + 5.0  # reader processes need a moment to import
    until = start + args.duration
    per_proc = [len(range(i, args.readers, args.procs)) for i in range(args.procs)]
    with ProcessPoolExecutor(args.procs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_share, initargs=(shared,)) as pool:
        futures = [pool.submit(reader_process, base, attached["run"]["id"], n, args.think,
                               start, until) for n in per_proc]
        main = uvloop.run(produce_and_listen(base, attached, args, start, until, server))
        parts = [future.result() for future in futures]
    latencies: dict[str, list[float]] = defaultdict(list)
    errors = list(main["errors"])
    for part, part_errors, _ in parts:
        for kind, values in part.items():
            latencies[kind].extend(values)
        errors.extend(part_errors)
    server = {k.split(":")[1]: v for k, v in latencies.items() if k.startswith("server:")}
    latencies = {k: v for k, v in latencies.items() if not k.startswith("server:")}
    every = [x for values in latencies.values() for x in values]
    requests = len(every) + len(main["ingest"])
    return {
        "readers": args.readers, "reader_processes": args.procs, "streams": args.streams,
        "duration_s": args.duration, "event_rate_per_s": args.rate, "think_s": args.think,
        "clients": args.clients, "requests": len(every),
        "requests_per_s": len(every) / args.duration, "errors": len(errors),
        "error_kinds": sorted(set(errors)), "overall": summary(every),
        "by_kind": {kind: summary(values) for kind, values in sorted(latencies.items())},
        "server_time": summary([x for values in server.values() for x in values]),
        "server_time_by_kind": {k: summary(v) for k, v in sorted(server.items())},
        "ingest": summary(main["ingest"]), "events_sent": len(main["ingest"]),
        "events_stored": main["stored"]["run"]["last_event_id"] - 1,
        "stream_delay": summary(main["delays"]),
        "server_cpu_s": main["server_cpu_s"],
        "server_cpu_ms_per_request": 1000 * main["server_cpu_s"] / max(1, requests),
        "readers_cpu_s": sum(cpu for _, _, cpu in parts),
        "load_average": {"start": main["load"][0], "end": main["load"][1]},
        "cpus": os.cpu_count(),
    }


def table(result: dict) -> str:
    head = f"{'request':<10}{'n':>7}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
    rows = [("all reads", result["overall"]), *result["by_kind"].items(),
            ("ingest", result["ingest"]), ("stream", result["stream_delay"]),
            ("in server", result["server_time"])]
    lines = [head, "-" * len(head)]
    for name, s in rows:
        lines.append(f"{name:<10}{s['n']:>7}{s['p50_ms']:>9.1f}{s['p90_ms']:>9.1f}"
                     f"{s['p99_ms']:>9.1f}{s['max_ms']:>9.1f}")
    lines.append(f"{result['readers']} readers in {result['reader_processes']} processes, "
                 f"{result['requests_per_s']:.0f} req/s; {result['events_sent']} events at "
                 f"{result['event_rate_per_s']:g}/s ({result['events_stored']} stored); "
                 f"errors: {result['errors']} {result['error_kinds'][:5]}")
    lines.append(f"server CPU {result['server_cpu_s']:.1f} s "
                 f"({result['server_cpu_ms_per_request']:.2f} ms per request), readers' CPU "
                 f"{result['readers_cpu_s']:.1f} s; load average "
                 f"{result['load_average']['start']:.1f} -> {result['load_average']['end']:.1f}"
                 f" on {result['cpus']} CPUs")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=100)
    parser.add_argument("--procs", type=int, default=4, help="reader processes")
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--think", type=float, default=0.5, help="seconds between requests")
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, \
            DashboardProcess(Path(tmp), "--max-runs", "0") as server:
        result = bench(server.url, psutil.Process(server.proc.pid), args)
    result["target"] = {"p99_ms": 150, "errors": 0}
    result["meets_target"] = result["overall"]["p99_ms"] <= 150 and result["errors"] == 0
    print(table(result))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
