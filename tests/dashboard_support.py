"""Shared by the dashboard tests: a tiny experiment, a real dashboard server process, waiting.

The server is ``python -m server.dashboard`` on 127.0.0.1 and a free port, in its own process
group, stopped by pid (SIGTERM, then SIGKILL after a timeout) when the ``with`` block ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from server.procs import terminate

REPO = Path(__file__).resolve().parents[1]
FAKE_RUN = Path(__file__).with_name("dashboard_fake_run.py")


def tiny_config(**overrides: Any) -> dict:
    """The smallest real experiment: 3 clients (one over budget), 2 rounds, a small CNN."""
    config = {
        "name": "tiny", "model": "smallcnn", "image_size": 28, "partitioner": "iid",
        "fleet": [{"device": "rpi5", "count": 2}, {"device": "mcu", "count": 1,
                                                     "policy": "fixed"}],
        "rounds": 2, "min_train_clients": 2, "pretrain_epochs": 0, "samples_per_client": 16,
        "test_samples": 64, "local_steps": 1, "batch_size": 8,
    }
    return {**config, **overrides}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


class DashboardProcess:
    """``python -m server.dashboard`` (or, with ``cli``, ``edgefed dashboard``) as a subprocess;
    ``env`` adds EDGEFED_DASHBOARD_* values."""

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None,
                 port: int | None = None, cli: bool = False) -> None:
        self.data_dir = data_dir
        self.args = args
        self.env = env or {}
        self.program = (["-c", "from server.cli import app; app()", "dashboard"] if cli
                        else ["-m", "server.dashboard"])
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = data_dir / f"dashboard-{self.port}.log"

    def __enter__(self) -> DashboardProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, *self.program, "--port", str(self.port),
                   "--data-dir", str(self.data_dir), *self.args]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, **self.env},
            )
        wait_for(self._up, 60, f"the dashboard on port {self.port}")
        return self

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"dashboard exited: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/api/info", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def __exit__(self, *_: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        leader = psutil.Process(self.proc.pid)
        terminate(lambda: [leader], 30, group=self.proc.pid)

    def create_experiment(self, config: dict, headers: dict | None = None) -> dict:
        """POST the experiment; the first validation builds the model (imports torch), which
        takes more than httpx's default 5 s on a loaded machine."""
        response = httpx.post(f"{self.url}/api/experiments", json=config, headers=headers,
                              timeout=60)
        assert response.status_code == 201, response.text
        return response.json()

    def fake_runs(self) -> dict[str, str]:
        """Environment that makes the runner start the stand-in run script."""
        return {"EDGEFED_DASHBOARD_RUN_COMMAND": json.dumps([sys.executable, str(FAKE_RUN)])}
