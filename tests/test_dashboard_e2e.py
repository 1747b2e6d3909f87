"""The dashboard launching the real ``edgefed run`` (Flower simulation): cancel stops every
process of the run, Flower's own sessions included. (tests/test_browser.py runs one to the end
through the form.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from server.procs import process_tree, running
from tests.dashboard_support import DashboardProcess, tiny_config, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def leader_pid(data_dir: Path, run_id: str) -> int | None:
    with sqlite3.connect(data_dir / "dashboard.db") as db:
        return db.execute("select pid from runs where id = ?", (run_id,)).fetchone()[0]


def test_cancel_stops_every_process_of_a_real_run(tmp_path):
    with DashboardProcess(tmp_path, env={"EDGEFED_DASHBOARD_CANCEL_TIMEOUT_S": "20"}) as server:
        config = tiny_config(name="cancelled-real", rounds=50)
        experiment = server.create_experiment(config)
        run_id = httpx.post(f"{server.url}/api/experiments/{experiment['id']}/launch").json()["id"]
        leader = wait_for(lambda: leader_pid(tmp_path, run_id), 60, "the run to start")
        tree = wait_for(lambda: (t := process_tree(leader)) and len(t) >= 3 and t, 180,
                        "the run's Flower processes")
        assert httpx.post(f"{server.url}/api/runs/{run_id}/cancel").status_code == 202
        run = wait_for(lambda: (d := httpx.get(f"{server.url}/api/runs/{run_id}").json()["run"])
                       ["status"] not in ("queued", "running") and d, 60, "the run to stop")
        assert run["status"] == "cancelled", run
        tree += process_tree(leader)
        wait_for(lambda: not running(tree), 30, "every process of the run to exit")
