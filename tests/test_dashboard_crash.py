"""kill -9 of the dashboard: every acknowledged event survives; what runs report while it is down
reaches the database once it is back, exactly once; a restarted dashboard re-attaches to the runs
still going (and can cancel them) and marks those whose process is gone interrupted."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from common.events import Event
from server.dashboard.store import digest
from tests.dashboard_support import (
    DashboardProcess,
    alive,
    tiny_config,
    wait_for,
)

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
        assert after["run"]["status"] == "running"  # its outside process ends it, not a restart
        finished = httpx.get(f"{server.url}/api/runs/{done['run']['id']}").json()
        assert finished["run"]["status"] == "finished"
        end = {"run_id": run_id, "state": {"status": "failed", "message": "outside"}}
        assert httpx.post(f"{server.url}/api/runs/{run_id}/events", json=end, headers={
            "Authorization": f"Bearer {attached['report_token']}"}).status_code == 201
        events = httpx.get(f"{server.url}/api/runs/{run_id}/stream", timeout=10).text
        assert events.count("event: client") == 20 and "event: end" in events


def launch(server: DashboardProcess, **config: object) -> str:
    experiment = server.create_experiment(tiny_config(**config))
    return httpx.post(f"{server.url}/api/experiments/{experiment['id']}/launch").json()["id"]


def run_of(server: DashboardProcess, run_id: str) -> dict:
    return httpx.get(f"{server.url}/api/runs/{run_id}").json()


def stored_once(db: Path, run_id: str, events_file: Path) -> int:
    """Asserts every event of the run's file is in the database exactly once; returns how
    many the file holds."""
    lines = [line for line in events_file.read_text().splitlines() if line]
    wanted = [digest(Event.model_validate_json(line).model_dump_json()) for line in lines]
    with sqlite3.connect(db) as connection:
        stored = Counter(dict(connection.execute(
            "select digest, count(*) from events where run_id = ? group by digest", (run_id,))))
    assert len(set(wanted)) == len(wanted)
    assert {d: stored[d] for d in wanted} == dict.fromkeys(wanted, 1)
    return len(wanted)


def test_events_reported_while_the_dashboard_is_down_arrive_exactly_once(tmp_path):
    probe = DashboardProcess(tmp_path)
    env = probe.fake_runs()
    with DashboardProcess(tmp_path, "--max-runs", "2", env=env) as server:
        going = launch(server, name="long-going", rounds=100)  # 25 s (ROUND_S 0.25)
        ending = launch(server, name="long-ending", rounds=20)  # 5 s
        wait_for(lambda: len(run_of(server, going)["rounds"]) >= 3, 60, "three rounds")
        server.kill9()
    pid = sqlite3.connect(tmp_path / "dashboard.db").execute(
        "select pid from runs where id = ?", (going,)).fetchone()[0]
    # the dashboard stays down for 8 s, past the stand-ins' back-off cap (0.5, 1, 2, then
    # BACKOFF_CAP_S = 3 s); both runs go on, one of them ends
    time.sleep(8)
    assert alive(pid)
    with DashboardProcess(tmp_path, "--max-runs", "2", env=env) as server:
        ended = run_of(server, ending)  # imported before the server answers
        assert ended["run"]["status"] == "finished"
        assert ended["run"]["message"] == "stand-in done"
        assert len(ended["rounds"]) == 20 and len(ended["clients"]) == 60
        files = tmp_path / "runs"
        assert stored_once(tmp_path / "dashboard.db", ending,
                           files / ending / "out" / "events.jsonl") == 1 + 20 * 4 + 1
        assert run_of(server, going)["run"]["status"] == "running"  # re-attached
        detail = wait_for(lambda: (d := run_of(server, going))["run"]["status"] != "running"
                          and d, 60, "the re-attached run to end")
        assert detail["run"]["status"] == "finished"
        assert len(detail["rounds"]) == 100 and len(detail["clients"]) == 300
        assert stored_once(tmp_path / "dashboard.db", going,
                           files / going / "out" / "events.jsonl") == 1 + 100 * 4 + 1


def test_restart_re_attaches_to_a_live_run_and_interrupts_a_gone_one(tmp_path):
    probe = DashboardProcess(tmp_path)
    env = {**probe.fake_runs(), "EDGEFED_DASHBOARD_CANCEL_TIMEOUT_S": "2"}
    with DashboardProcess(tmp_path, "--max-runs", "2", env=env) as server:
        live = launch(server, name="slow-live")
        gone = launch(server, name="slow-gone")
        for run_id in (live, gone):  # their own first report is in: they run on from here
            wait_for(lambda r=run_id: run_of(server, r)["run"]["message"] == "stand-in", 60,
                     "the runs to start")
        queued = launch(server, name="ok-queued")
        server.kill9()
    db = sqlite3.connect(tmp_path / "dashboard.db")
    pids = dict(db.execute("select id, pid from runs where pid is not null").fetchall())
    os.killpg(pids[gone], signal.SIGKILL)
    wait_for(lambda: not alive(pids[gone]), 10, "the killed run to exit")
    assert alive(pids[live])  # the run outlived the dashboard: it has its own session
    with DashboardProcess(tmp_path, "--max-runs", "2", env=env) as server:
        after = run_of(server, gone)["run"]
        assert after["status"] == "interrupted" and "restarted" in after["message"]
        assert run_of(server, live)["run"]["status"] == "running"
        # the queued run is queued again (with a new token) and runs
        finished = wait_for(lambda: (d := run_of(server, queued))["run"]["status"] not in
                            ("queued", "running") and d, 60, "the re-queued run")
        assert finished["run"]["status"] == "finished" and len(finished["rounds"]) == 3
        assert httpx.post(f"{server.url}/api/runs/{live}/cancel").status_code == 202
        wait_for(lambda: not alive(pids[live]), 20, "the adopted run to be stopped")
        cancelled = wait_for(lambda: (d := run_of(server, live))["run"]["status"] != "running"
                             and d, 20, "the adopted run to end")
        assert cancelled["run"]["status"] == "cancelled"
