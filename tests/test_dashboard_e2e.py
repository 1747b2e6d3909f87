"""The dashboard launching the real ``edgefed run`` (Flower simulation): cancel stops every
process of the run's session. (tests/test_browser.py runs one to the end through the form.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.dashboard_support import DashboardProcess, alive, tiny_config, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def session_members(sid: int) -> list[int]:
    """Live processes whose session id is ``sid`` (the run's leader started a new session)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_cancel_stops_every_process_of_a_real_run(tmp_path):
    with DashboardProcess(tmp_path, env={"EDGEFED_DASHBOARD_CANCEL_TIMEOUT_S": "20"}) as server:
        config = tiny_config(name="cancelled-real", rounds=50)
        experiment = httpx.post(f"{server.url}/api/experiments", json=config).json()
        run_id = httpx.post(f"{server.url}/api/experiments/{experiment['id']}/launch").json()["id"]
        wait_for(lambda: httpx.get(f"{server.url}/api/runs/{run_id}").json()["run"]["message"]
                 .startswith("engine="), 120, "edgefed run to report running")
        wait_for(lambda: len(session_members(pid(tmp_path, run_id))) > 2, 120,
                 "the run's Flower processes")
        leader = pid(tmp_path, run_id)
        assert httpx.post(f"{server.url}/api/runs/{run_id}/cancel").status_code == 202
        run = wait_for(lambda: (d := httpx.get(f"{server.url}/api/runs/{run_id}").json()["run"])
                       ["status"] != "running" and d, 60, "the run to stop")
        assert run["status"] == "cancelled"
        wait_for(lambda: not alive(leader) and not session_members(leader), 30,
                 "every process of the run to exit")


def pid(data_dir: Path, run_id: str) -> int:
    with sqlite3.connect(data_dir / "dashboard.db") as db:
        return db.execute("select pid from runs where id = ?", (run_id,)).fetchone()[0]
