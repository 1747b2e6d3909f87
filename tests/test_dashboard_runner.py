"""The run queue against a real dashboard process: runs are separate process groups that may
finish, crash, or refuse to stop, and none of it reaches the dashboard.

The process is ``tests/dashboard_fake_run.py`` (``edgefed run``'s command line, behaviour chosen
per test); ``test_dashboard_e2e.py`` launches the real ``edgefed run``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.dashboard_support import (
    REPO,
    DashboardProcess,
    alive,
    tiny_config,
    wait_for,
)

pytestmark = pytest.mark.e2e


def launch(server: DashboardProcess, name: str) -> str:
    experiment = server.create_experiment(tiny_config(name=name))
    response = httpx.post(f"{server.url}/api/experiments/{experiment['id']}/launch")
    assert response.status_code == 202, response.text
    return response.json()["id"]


def run_of(server: DashboardProcess, run_id: str) -> dict:
    return httpx.get(f"{server.url}/api/runs/{run_id}").json()


def ended(server: DashboardProcess, run_id: str) -> dict | None:
    detail = run_of(server, run_id)
    return detail if detail["run"]["status"] not in ("queued", "running") else None


@pytest.fixture
def server(tmp_path):
    probe = DashboardProcess(tmp_path)
    env = {**probe.fake_runs(), "EDGEFED_DASHBOARD_CANCEL_TIMEOUT_S": "2"}
    with DashboardProcess(tmp_path, "--max-runs", "1", env=env) as running:
        yield running


def test_queue_runs_one_at_a_time_and_marks_exit_codes(server):
    slow = launch(server, "slow-first")
    ok = launch(server, "ok-second")
    crash = launch(server, "crash-third")
    wait_for(lambda: run_of(server, slow)["run"]["status"] == "running", 30, "slow to start")
    assert run_of(server, ok)["run"]["status"] == "queued"
    httpx.post(f"{server.url}/api/runs/{slow}/cancel")
    assert wait_for(lambda: ended(server, slow), 30, "cancel")["run"]["status"] == "cancelled"
    finished = wait_for(lambda: ended(server, ok), 60, "ok run")
    assert finished["run"]["status"] == "finished" and finished["run"]["exit_code"] == 0
    assert [r["round"] for r in finished["rounds"]] == [0, 1, 2]
    failed = wait_for(lambda: ended(server, crash), 60, "crash run")["run"]
    assert failed["status"] == "failed" and failed["exit_code"] == 3
    assert "boom: the stand-in run crashed" in failed["message"]
    assert httpx.get(f"{server.url}/api/info").status_code == 200


def test_cancel_kills_the_whole_group_after_the_timeout(server, tmp_path):
    run_id = launch(server, "stubborn-run")
    child_pid_file = tmp_path / "runs" / run_id / "out" / "child.pid"
    child = int(wait_for(lambda: child_pid_file.exists() and child_pid_file.read_text(), 30,
                         "the grandchild"))
    assert run_of(server, run_id)["run"]["status"] == "running"
    assert httpx.post(f"{server.url}/api/runs/{run_id}/cancel").status_code == 202
    detail = wait_for(lambda: ended(server, run_id), 20, "SIGKILL after the timeout")
    assert detail["run"]["status"] == "cancelled" and "SIGKILL" in detail["run"]["message"]
    wait_for(lambda: not alive(child), 10, "the grandchild to be gone")


def test_the_run_token_is_in_its_environment_never_in_argv(server):
    run_id = launch(server, "slow-token")
    detail = wait_for(lambda: (d := run_of(server, run_id))["run"]["message"] == "stand-in"
                      and d, 30, "the run's own report (it needs the token)")
    pid = sqlite3.connect(server.data_dir / "dashboard.db").execute(
        "select pid from runs where id = ?", (run_id,)).fetchone()[0]
    environ = dict(item.split(b"=", 1) for item in
                   Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
    token = environ[b"EDGEFED_REPORT_TOKEN"]
    assert len(token) >= 32 and Path(f"/proc/{pid}/environ").stat().st_mode & 0o077 == 0
    assert token not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert detail["run"]["status"] == "running"
    httpx.post(f"{server.url}/api/runs/{run_id}/cancel")
    wait_for(lambda: ended(server, run_id), 30, "cancel")


def test_launch_file_at_startup_reuses_its_experiment(tmp_path):
    """As ``make run`` does it: ``edgefed dashboard --launch FILE``, twice (its --data-dir holds
    the database and the run folders)."""
    config = tmp_path / "ok-startup.json"
    config.write_text(json.dumps(tiny_config(name="ok-startup")))
    data = tmp_path / "data"
    probe = DashboardProcess(data)
    for restart in (1, 2):
        with DashboardProcess(data, "--launch", str(config), env=probe.fake_runs(),
                              cli=True) as server:
            experiments = httpx.get(f"{server.url}/api/experiments").json()
            assert [e["name"] for e in experiments] == ["ok-startup"]
            runs = httpx.get(f"{server.url}/api/runs").json()
            assert len(runs) == restart and {r["experiment_id"] for r in runs} == {
                experiments[0]["id"]}
            assert wait_for(lambda s=server, r=runs[0]["id"]: ended(s, r), 60,
                            "the run")["run"]["status"] == "finished"
            assert (data / "runs" / runs[0]["id"] / "out").is_dir()
    assert (data / "dashboard.db").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["--host", "0.0.0.0"], "token: required"),
    (["--launch", "missing.yaml"], "missing.yaml"),
])
def test_bad_settings_stop_before_serving(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "server.dashboard", "--data-dir",
                             str(tmp_path), *args], capture_output=True, text=True, timeout=60,
                            cwd=REPO)
    assert result.returncode == 2 and message in result.stderr
