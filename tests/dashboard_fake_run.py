"""A stand-in for ``edgefed run`` with the same command line, for the runner's process tests.

The real CLI cannot be told to crash, ignore SIGTERM or leave a grandchild behind; this script
can, chosen by the experiment's name:

- ``ok-*``: reports running, one round event per round (0.2 s apart), exits 0 without a final
  state (the runner must mark it finished from the exit code);
- ``crash-*``: writes to stderr and exits 3;
- ``stubborn-*``: starts a grandchild (``sleep``), ignores SIGTERM and waits forever (the runner
  must SIGKILL the whole group after its timeout);
- ``slow-*``: reports running, then waits until SIGTERM, on which it exits 130;
- ``long-*``: reports through edgefed's own :class:`server.report.Reporter` (file + POST, spool
  and retry), a round every ``ROUND_S`` for the config's ``rounds``: 3 client events and a round
  event each, then ``finished``; exits 0. What a real run does, at a pace a test can outlast,
  with the reporter's back-off capped at ``BACKOFF_CAP_S`` instead of 15 s (the same doubling
  from 0.5 s, so a dashboard down for a few seconds is down past the cap).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from common.events import RoundResult, RunState
from common.record import ClientRecord
from server import report
from server.report import Reporter

ROUND_S = 0.25
CONNECT_S = 15.0
BACKOFF_CAP_S = 3.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["run"])
    parser.add_argument("config")
    for option in ("engine", "out", "run-id", "report-url"):
        parser.add_argument(f"--{option}", required=True)
    parser.add_argument("--report-token", default=os.environ.get("EDGEFED_REPORT_TOKEN"))
    args = parser.parse_args()
    config = json.loads(Path(args.config).read_text())
    name = config["name"]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    client = httpx.Client(headers={"Authorization": f"Bearer {args.report_token}"}, timeout=10)

    def post(**part: object) -> None:
        """POST one event. A run the dashboard re-queues at startup can start before the
        dashboard listens on its port: connection refusals are retried for ``CONNECT_S``, as a
        real run's reporter re-sends what did not arrive."""
        deadline = time.monotonic() + CONNECT_S
        while True:
            try:
                client.post(args.report_url, json={"run_id": args.run_id, **part}
                            ).raise_for_status()
                return
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    if name.startswith("long"):
        return long_run(args.run_id, Path(args.out), args.report_url, args.report_token,
                        config["rounds"])
    if name.startswith("crash"):
        print("boom: the stand-in run crashed", file=sys.stderr)
        return 3
    if name.startswith("stubborn"):
        child = subprocess.Popen(["sleep", "300"])
        Path(args.out, "child.pid").write_text(str(child.pid))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)
    post(state={"status": "running", "message": "stand-in"})
    if name.startswith("slow"):
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
        while True:
            time.sleep(1)
    for r in range(3):
        post(round={"round": r, "accuracy": 0.5 + 0.1 * r, "loss": 1.0 - 0.1 * r})
        time.sleep(0.2)
    return 0


def long_run(run_id: str, out: Path, url: str, token: str, rounds: int) -> int:
    report.RETRY_MAX_S = BACKOFF_CAP_S  # read at every retry
    reporter = Reporter(run_id, out, url, token)
    reporter.emit(state=RunState(status="running", message="stand-in"))
    for r in range(1, rounds + 1):
        for p in range(3):
            reporter.emit(client=ClientRecord(
                round=r, node_id=p, partition_id=p, device="rpi5", status="ok",
                accuracy=0.5, activation_bytes=1000 * (p + 1)))
        reporter.emit(round=RoundResult(round=r, accuracy=min(1.0, 0.01 * r), loss=1.0))
        time.sleep(ROUND_S)
    reporter.emit(state=RunState(status="finished", message="stand-in done"))
    reporter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
