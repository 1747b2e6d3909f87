"""kill -9 of the dashboard: every acknowledged event survives, in-flight runs show interrupted,
and the run's process is stopped by the restarted dashboard."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from tests.dashboard_support import DashboardProcess, alive, tiny_config, wait_for

pytestmark = pytest.mark.e2e


def test_kill_9_loses_nothing_acknowledged(tmp_path):
    db = f"sqlite:///{tmp_path / 'crash.db'}"
    with DashboardProcess(tmp_path, "--db", db) as server:
        experiment = server.create_experiment(tiny_config())
        attached = httpx.post(f"{server.url}/api/experiments/{experiment['id']}/attach").json()
        run_id = attached["run"]["id"]
        done = httpx.post(f"{server.url}/api/experiments/{experiment['id']}/attach").json()
        with httpx.Client(headers={"Authorization": f"Bearer {attached['report_token']}"}) as c:
            for r in range(5):
                for p in range(4):
                    event = {"run_id": run_id, "client": {
                        "round": r + 1, "node_id": p, "partition_id": p, "device": "rpi5",
                        "status": "ok", "peak_step_bytes": 1000 * (p + 1), "accuracy": 0.1 * r}}
                    assert c.post(attached["report_url"], json=event).status_code == 201
                event = {"run_id": run_id, "round": {"round": r + 1, "accuracy": 0.1 * r,
                                                      "loss": 1.0}}
                assert c.post(attached["report_url"], json=event).status_code == 201
        finish = {"run_id": done["run"]["id"], "state": {"status": "finished"}}
        assert httpx.post(done["report_url"], json=finish, headers={
            "Authorization": f"Bearer {done['report_token']}"}).status_code == 201
        before = httpx.get(f"{server.url}/api/runs/{run_id}").json()
        server.kill9()
    with DashboardProcess(tmp_path, "--db", db) as server:
        after = httpx.get(f"{server.url}/api/runs/{run_id}").json()
        assert after["rounds"] == before["rounds"] and len(after["rounds"]) == 5
        assert after["clients"] == before["clients"] and len(after["clients"]) == 20
        assert after["run"]["status"] == "interrupted"
        assert "restarted" in after["run"]["message"]
        finished = httpx.get(f"{server.url}/api/runs/{done['run']['id']}").json()
        assert finished["run"]["status"] == "finished"
        events = httpx.get(f"{server.url}/api/runs/{run_id}/stream", timeout=10).text
        assert events.count("event: client") == 20 and "event: end" in events


def test_restart_stops_a_run_process_left_behind(tmp_path):
    probe = DashboardProcess(tmp_path)
    env = probe.fake_runs()
    with DashboardProcess(tmp_path, env=env) as server:
        experiment = server.create_experiment(tiny_config(name="slow-orphan"))
        run_id = httpx.post(f"{server.url}/api/experiments/{experiment['id']}/launch").json()["id"]
        detail = wait_for(lambda: (d := httpx.get(f"{server.url}/api/runs/{run_id}").json())
                          ["run"]["status"] == "running" and d, 30, "the run to start")
        server.kill9()
    pid = sqlite3.connect(tmp_path / "dashboard.db").execute(
        "select pid from runs where id = ?", (run_id,)).fetchone()[0]
    assert alive(pid)  # the run outlived the dashboard: it has its own session
    with DashboardProcess(tmp_path, env=env) as server:
        after = httpx.get(f"{server.url}/api/runs/{run_id}").json()
        assert after["run"]["status"] == "interrupted"
        assert after["run"]["last_event_id"] >= detail["run"]["last_event_id"]
        wait_for(lambda: not alive(pid), 20, "the orphaned run to be stopped")
