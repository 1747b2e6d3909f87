"""Dashboard API against a temporary SQLite database (FastAPI TestClient, nothing executed:
the run queue is paused, runs are fed through the ingestion endpoint)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from typing import get_args

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql

from common.compression.registry import REGISTRY
from common.record import ClientRecord
from server.dashboard import store
from server.dashboard.app import create_app
from server.dashboard.models import ClientRow
from server.dashboard.schemas import MemoryMetric
from server.dashboard.settings import Settings
from tests.config_cases import BAD_EXPERIMENTS, experiment
from tests.dashboard_support import REPO, tiny_config, wait_for

BASE = "http://127.0.0.1"
REMOTE = re.compile(r"""(src=|href=|from |import\(|url\()["']?(https?:)?//""")  # remote assets


def make_client(tmp_path, **settings) -> TestClient:
    """A dashboard whose reads are always fresh (the cache's staleness window is tested in
    test_dashboard_cache), so a refused write that was stored anyway would show."""
    settings = {"max_concurrent_runs": 0, "cache_max_stale_s": 0.0, **settings}
    app = create_app(Settings(data_dir=tmp_path, **settings))
    return TestClient(app, base_url=BASE)


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        yield c


def create(client, **overrides) -> dict:
    response = client.post("/api/experiments", json=tiny_config(**overrides))
    assert response.status_code == 201, response.text
    return response.json()


def attach(client, experiment_id: int) -> tuple[str, dict]:
    body = client.post(f"/api/experiments/{experiment_id}/attach").json()
    return body["run"]["id"], {"Authorization": f"Bearer {body['report_token']}"}


def client_event(run_id: str, round: int, partition: int, **fields) -> dict:
    result = {"round": round, "node_id": 1000 + partition, "partition_id": partition,
              "device": "rpi5", "status": "ok", **fields}
    return {"run_id": run_id, "client": result}


def post(client, run_id, headers, event) -> dict:
    response = client.post(f"/api/runs/{run_id}/events", json=event, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def field_errors(response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {".".join(map(str, e["loc"][1:])): e["msg"] for e in response.json()["detail"]}


def test_experiment_lifecycle(client):
    experiment = create(client, name="first")
    assert experiment["config"]["fleet"][1]["policy"] == "fixed"
    assert client.get(f"/api/experiments/{experiment['id']}").json()["name"] == "first"
    assert [e["name"] for e in client.get("/api/experiments").json()] == ["first"]
    assert client.delete(f"/api/experiments/{experiment['id']}").status_code == 204
    assert client.get(f"/api/experiments/{experiment['id']}").status_code == 404
    assert client.get("/api/experiments").json() == []


@pytest.mark.parametrize(("overrides", "field"), [
    ({"rounds": 0}, "rounds"),
    ({"compression": {"eps": 1.5}}, "compression.eps"),
    ({"fleet": [{"device": "toaster", "count": 2}]}, "fleet.0.device"),
    ({"min_train_clients": 9}, "min_train_clients"),
    ({"name": "x" * 101}, "name"),
    ({"dataset_path": "/etc/passwd"}, "dataset_path"),
    ({"fleet": [{"device": "rpi5", "count": 2001}]}, "fleet.0.count"),
])
def test_invalid_config_names_the_field_and_stores_nothing(client, overrides, field):
    create(client, name="kept")
    before = client.get("/api/experiments").json()
    for path in ("/api/experiments", "/api/experiments/validate"):
        errors = field_errors(client.post(path, json=tiny_config(**overrides)))
        assert field in errors, errors
    assert client.get("/api/experiments").json() == before


def refused(client, body: bytes) -> list[dict]:
    """Both experiment endpoints answer 422 with the same errors, no traceback; nothing is
    stored. Returns the errors."""
    before = client.get("/api/experiments").json()
    answers = [client.post(path, content=body, headers={"Content-Type": "application/json"})
               for path in ("/api/experiments", "/api/experiments/validate")]
    assert [r.status_code for r in answers] == [422, 422], answers[0].text
    assert answers[0].json() == answers[1].json() and "Traceback" not in answers[0].text
    assert client.get("/api/experiments").json() == before
    return answers[0].json()["detail"]


@pytest.mark.parametrize(("changes", "expected"), [c[1:] for c in BAD_EXPERIMENTS],
                         ids=[c.id for c in BAD_EXPERIMENTS])
def test_every_wrong_field_is_named_like_the_cli_does(client, changes, expected):
    create(client, name="kept")
    detail = refused(client, json.dumps(experiment(changes, tiny_config())).encode())
    errors = {e["field"]: e["msg"] for e in detail}
    assert sorted(errors) == sorted(expected), errors
    for field, fragment in expected.items():
        assert fragment in errors[field], errors
    for e in detail:  # the form puts each error beside the input its location names
        assert e["loc"] == ["body", *(int(p) if p.isdigit() else p
                                      for p in e["field"].split("."))]


@pytest.mark.parametrize(("body", "message"), [
    (b'{"name": "x",\n "rounds": 3,,\n}',
     "body:2:14: Expecting property name enclosed in double quotes"),
    (b'{"name": "caf\xe9"}', "body:1:14: not UTF-8 text (byte 0xe9)"),
    (b'[1, 2]', "body: expected a mapping of fields at the top level, got a list"),
    (b"", "body:1:1: Expecting value"),
])
def test_unparsable_bodies_are_one_error_with_line_and_column(client, body, message):
    assert [(e["loc"], e["msg"]) for e in refused(client, body)] == [(["body"], message)]


def test_duplicate_keys_are_refused_with_their_lines(client):
    body = ('{"lr": 0.1,\n "rounds": 2,\n "compression": {"method": "svd", "method": "hosvd"},'
            '\n "lr": 0.2}')
    assert [e["msg"] for e in refused(client, body.encode())] == [
        "body:3:45: duplicate key 'method' (first given at line 3)",
        "body:4:8: duplicate key 'lr' (first given at line 1)"]


def test_validate_returns_the_config_with_defaults(client):
    response = client.post("/api/experiments/validate", json=tiny_config())
    assert response.status_code == 200
    assert response.json()["compression"]["method"] == "hosvd"
    assert client.get("/api/experiments").json() == []


def test_token_guards_mutations_only(tmp_path):
    with make_client(tmp_path, token="s3cret") as c:
        assert c.post("/api/experiments", json=tiny_config()).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert c.post("/api/experiments", json=tiny_config(), headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        experiment = c.post("/api/experiments", json=tiny_config(), headers=right).json()
        assert c.get("/api/experiments").status_code == 200
        assert c.post(f"/api/experiments/{experiment['id']}/launch").status_code == 401
        assert c.delete(f"/api/experiments/{experiment['id']}").status_code == 401
        assert c.get("/api/info").json()["auth_required"] is True


def test_non_loopback_bind_requires_a_token():
    with pytest.raises(ValidationError, match="token"):
        Settings(host="0.0.0.0")
    assert Settings(host="0.0.0.0", token="t").host == "0.0.0.0"
    assert Settings(host="::1").base_url == "http://[::1]:8080"


def test_cross_site_requests_are_refused(client):
    evil = {"Origin": "http://evil.example"}
    response = client.post("/api/experiments", json=tiny_config(), headers=evil)
    assert response.status_code == 403
    assert client.get("/api/info", headers={"Host": "evil.example:8080"}).status_code == 403
    same = {"Origin": BASE}
    assert client.post("/api/experiments", json=tiny_config(), headers=same).status_code == 201


def test_oversized_and_chunked_bodies_are_refused(client):
    big = json.dumps(tiny_config(name="x" * (2 << 20)))
    response = client.post("/api/experiments", content=big,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413

    def chunks():
        yield json.dumps(tiny_config()).encode()

    response = client.post("/api/experiments", content=chunks(),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 411
    assert client.get("/api/experiments").json() == []


def test_ingestion_requires_the_run_token(client):
    run_id, headers = attach(client, create(client)["id"])
    event = client_event(run_id, 1, 0)
    assert client.post(f"/api/runs/{run_id}/events", json=event).status_code == 401
    bad = {"Authorization": "Bearer not-the-token"}
    assert client.post(f"/api/runs/{run_id}/events", json=event, headers=bad).status_code == 401
    other_id, other_headers = attach(client, create(client)["id"])
    response = client.post(f"/api/runs/{run_id}/events", json=event, headers=other_headers)
    assert response.status_code == 401
    assert client.post("/api/runs/nope/events", json=event, headers=headers).status_code == 404
    assert client.get(f"/api/runs/{run_id}/clients").json() == []


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda e: e.update(run_id="someone-else"), "run_id"),
    (lambda e: e["client"].update(num_examples=2**70), "client.num_examples"),
    (lambda e: e["client"].update(status="exploded"), "client.status"),
    (lambda e: e.update(round={"round": 1, "accuracy": 0.5, "loss": 1.0}), ""),
])
def test_invalid_events_are_422_and_change_nothing(client, mutate, field):
    run_id, headers = attach(client, create(client)["id"])
    post(client, run_id, headers, client_event(run_id, 1, 0, accuracy=0.25))
    before = client.get(f"/api/runs/{run_id}").json()
    event = client_event(run_id, 1, 0, accuracy=0.75)
    mutate(event)
    response = client.post(f"/api/runs/{run_id}/events", json=event, headers=headers)
    assert field in field_errors(response)
    assert client.get(f"/api/runs/{run_id}").json() == before


def test_non_finite_numbers_are_refused(client):
    run_id, headers = attach(client, create(client)["id"])
    body = json.dumps({"run_id": run_id, "round": {"round": 1, "accuracy": float("nan"),
                                                   "loss": 1.0}})  # json writes NaN
    response = client.post(f"/api/runs/{run_id}/events", content=body,
                           headers={**headers, "Content-Type": "application/json"})
    assert "round.accuracy" in field_errors(response)


def test_events_build_the_run_and_resent_events_replace_rows(client):
    run_id, headers = attach(client, create(client)["id"])
    post(client, run_id, headers, {"run_id": run_id, "round": {"round": 0, "accuracy": 0.4,
                                                                 "loss": 1.5}})
    post(client, run_id, headers, client_event(
        run_id, 1, 0, peak_step_bytes=5000, budget_bytes=8000, ranks=[[2, 3, 4, 4]], method="hosvd",
        node_id=2**64 - 1))
    post(client, run_id, headers, client_event(run_id, 1, 1, status="oom",
                                               reason="out of memory: needs 9 bytes, budget 8"))
    post(client, run_id, headers, client_event(run_id, 1, 1, status="oom", reason="re-sent"))
    detail = client.get(f"/api/runs/{run_id}").json()
    assert detail["run"]["status"] == "running"
    assert [r["round"] for r in detail["rounds"]] == [0]
    rows = {c["partition_id"]: c for c in detail["clients"]}
    assert len(detail["clients"]) == 2
    assert rows[0]["node_id"] == 2**64 - 1 and rows[0]["ranks"] == [[2, 3, 4, 4]]
    assert rows[1]["reason"] == "re-sent"
    assert len(client.get(f"/api/runs/{run_id}/clients", params={"round": 1}).json()) == 2
    assert client.get(f"/api/runs/{run_id}/clients", params={"round": 2}).json() == []
    assert client.get(f"/api/runs/{run_id}/rounds").json()[0]["accuracy"] == 0.4


def test_terminal_state_is_final_but_later_events_are_kept(client):
    run_id, headers = attach(client, create(client)["id"])
    post(client, run_id, headers, {"run_id": run_id, "state": {"status": "finished"}})
    post(client, run_id, headers, {"run_id": run_id, "state": {"status": "running"}})
    post(client, run_id, headers, client_event(run_id, 2, 0))
    detail = client.get(f"/api/runs/{run_id}").json()
    assert detail["run"]["status"] == "finished" and detail["run"]["finished_at"]
    assert len(detail["clients"]) == 1
    assert client.post(f"/api/runs/{run_id}/cancel").status_code == 409


def test_etag_lets_readers_skip_unchanged_runs(client):
    run_id, headers = attach(client, create(client)["id"])
    first = client.get(f"/api/runs/{run_id}")
    etag = first.headers["ETag"]
    assert client.get(f"/api/runs/{run_id}", headers={"If-None-Match": etag}).status_code == 304
    post(client, run_id, headers, client_event(run_id, 1, 0))
    again = client.get(f"/api/runs/{run_id}", headers={"If-None-Match": etag})
    assert again.status_code == 200 and len(again.json()["clients"]) == 1


def stream_messages(client, run_id, **params) -> list[tuple[str, str, dict]]:
    with client.stream("GET", f"/api/runs/{run_id}/stream", params=params) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    messages = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            messages.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return messages


def test_stream_replays_the_log_and_resumes(client):
    run_id, headers = attach(client, create(client)["id"])
    ids = [post(client, run_id, headers, client_event(run_id, 1, p))["event_id"]
           for p in range(3)]
    post(client, run_id, headers, {"run_id": run_id, "state": {"status": "finished"}})
    messages = stream_messages(client, run_id)
    assert [kind for _, kind, _ in messages] == ["state", "client", "client", "client", "state",
                                                 "end"]
    assert messages[2][2]["client"]["partition_id"] == 1
    resumed = stream_messages(client, run_id, after=ids[1])
    assert [int(i) for i, kind, _ in resumed if kind == "client"] == [ids[2]]
    assert client.get("/api/runs/nope/stream").status_code == 404


def test_export_one_run_and_all(client):
    run_id, headers = attach(client, create(client)["id"])
    post(client, run_id, headers, client_event(run_id, 1, 0, ranks=[[1, 2]], peak_step_bytes=10))
    post(client, run_id, headers, {"run_id": run_id, "round": {"round": 1, "accuracy": 0.6,
                                                                 "loss": 1.0}})
    other_id, other_headers = attach(client, create(client)["id"])
    post(client, other_id, other_headers, client_event(other_id, 1, 3))
    response = client.get(f"/api/runs/{run_id}/export", params={"format": "csv"})
    assert response.headers["content-disposition"].startswith("attachment")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 1 and rows[0]["ranks"] == "[[1, 2]]" and rows[0]["peak_step_bytes"] == "10"
    assert rows[0]["eps"] == rows[0]["training_bytes"] == ""  # no value: an empty cell
    assert list(rows[0]) == ["run_id", *ClientRecord.model_fields]
    rounds = client.get(f"/api/runs/{run_id}/export", params={"format": "csv",
                                                               "table": "rounds"}).text
    assert list(csv.DictReader(io.StringIO(rounds)))[0]["accuracy"] == "0.6"
    assert client.get(f"/api/runs/{run_id}/export").json()["run"]["id"] == run_id
    all_rows = list(csv.DictReader(io.StringIO(
        client.get("/api/export", params={"format": "csv"}).text)))
    assert {r["run_id"] for r in all_rows} == {run_id, other_id}
    assert len(client.get("/api/export").json()) == 2
    assert "format" in field_errors(client.get("/api/export", params={"format": "xml"}))


def test_compare_marks_the_pareto_front_of_finished_runs(client):
    runs = {}
    for name, kept, accuracy, end in [("small", 1_000, 0.6, "finished"),
                                      ("big", 9_000, 0.8, "finished"),
                                      ("worse", 5_000, 0.5, "finished"),
                                      ("broken", 500, 0.9, "failed")]:
        run_id, headers = attach(client, create(client, name=name)["id"])
        post(client, run_id, headers, client_event(run_id, 1, 0, activation_bytes=kept,
                                                   peak_step_bytes=10 * kept))
        post(client, run_id, headers, client_event(run_id, 1, 1, status="oom"))
        post(client, run_id, headers, {"run_id": run_id, "round": {
            "round": 1, "accuracy": accuracy, "loss": 1.0}})
        post(client, run_id, headers, {"run_id": run_id, "state": {"status": end}})
        runs[name] = run_id
    body = client.get("/api/compare", params={"run": list(runs.values())}).json()
    front = {r["experiment_name"]: r["pareto"] for r in body["runs"]}
    assert front == {"small": True, "big": True, "worse": False, "broken": False}
    worse = next(r for r in body["runs"] if r["experiment_name"] == "worse")
    assert worse["num_oom"] == 1 and worse["activation_bytes_mean"] == 5000
    assert worse["memory_bytes"] == 5000 and worse["peak_step_bytes_max"] == 50_000
    by_peak = client.get("/api/compare", params={"run": list(runs.values())[:3],
                                                 "memory": "peak_step"}).json()
    assert {r["experiment_name"]: r["memory_bytes"] for r in by_peak["runs"]} == {
        "small": 10_000, "big": 90_000, "worse": 50_000}
    every = client.get("/api/compare", params={"run": list(runs.values()),
                                               "finished_only": "false"}).json()
    front = {r["experiment_name"]: r["pareto"] for r in every["runs"]}
    assert front == {"small": False, "big": False, "worse": False, "broken": True}
    assert len(client.get("/api/compare").json()["runs"]) == 4
    assert client.get("/api/compare", params={"run": "missing"}).status_code == 404


def test_compare_page_offers_the_api_memory_metrics_default_first(client):
    """The page's axis choices are the API's, and its default (listed first) is the API's."""
    page = (REPO / "server" / "dashboard" / "static" / "compare.js").read_text()
    choices = re.findall(r"(\w+):", re.search(r"const MEMORY = \{(.*?)\};", page, re.S)[1])
    assert choices == list(get_args(MemoryMetric))
    assert client.get("/api/compare").json()["memory"] == choices[0] == "activation"


def test_cancel_queued_run_and_delete_conflicts(client):
    experiment = create(client)
    launched = client.post(f"/api/experiments/{experiment['id']}/launch",
                           json={"engine": "simulation"})
    assert launched.status_code == 202 and launched.json()["status"] == "queued"
    run_id = launched.json()["id"]
    assert client.delete(f"/api/experiments/{experiment['id']}").status_code == 409
    cancelled = client.post(f"/api/runs/{run_id}/cancel")
    assert cancelled.status_code == 202
    assert client.get(f"/api/runs/{run_id}").json()["run"]["status"] == "cancelled"
    assert client.post(f"/api/runs/{run_id}/cancel").status_code == 409
    assert "engine" in field_errors(client.post(
        f"/api/experiments/{experiment['id']}/launch", json={"engine": "warp"}))
    assert client.delete(f"/api/experiments/{experiment['id']}").status_code == 204


def test_restart_ends_only_runs_whose_process_is_gone(tmp_path):
    with make_client(tmp_path) as c:
        experiment = create(c)["id"]
        outside, headers = attach(c, experiment)
        post(c, outside, headers, client_event(outside, 1, 0))
        done_id, done_headers = attach(c, experiment)
        post(c, done_id, done_headers, {"run_id": done_id, "state": {"status": "finished"}})
        queued = c.post(f"/api/experiments/{experiment}/launch").json()["id"]  # queue paused
        lost = c.post(f"/api/experiments/{experiment}/launch").json()["id"]
        exited = subprocess.Popen(["true"])  # noqa: S607 - a pid that is gone
        exited.wait(10)
        c.app.state.services.runlog.set_state(lost, "running", pid=exited.pid)
    with make_client(tmp_path) as c:
        run = c.get(f"/api/runs/{outside}").json()
        assert run["run"]["status"] == "running" and len(run["clients"]) == 1  # its own to end
        assert c.get(f"/api/runs/{done_id}").json()["run"]["status"] == "finished"
        assert c.get(f"/api/runs/{queued}").json()["run"]["status"] == "queued"
        assert c.app.state.services.runner.knows(queued)  # queued again
        gone = c.get(f"/api/runs/{lost}").json()["run"]
        assert gone["status"] == "interrupted" and "restarted" in gone["message"]


def test_an_event_sent_twice_is_stored_once(client):
    run_id, headers = attach(client, create(client)["id"])
    event = {**client_event(run_id, 1, 0), "ts": 1700000000.5}
    first, again = post(client, run_id, headers, event), post(client, run_id, headers, event)
    assert first == again
    other = post(client, run_id, headers, {**event, "ts": 1700000001.5})  # a new event
    post(client, run_id, headers, {"run_id": run_id, "state": {"status": "finished"}})
    ids = [int(i) for i, kind, _ in stream_messages(client, run_id) if kind == "client"]
    assert ids == [first["event_id"], other["event_id"]]


def test_catalogue_schema_and_pages(client):
    devices = client.get("/api/devices").json()
    assert {"mcu", "rpi5"} <= {p["name"] for p in devices["profiles"]}
    schema = client.get("/api/schema/experiment").json()
    assert "fleet" in schema["required"] and "compression" in schema["properties"]
    methods = client.get("/api/methods").json()
    assert [m["name"] for m in methods] == list(REGISTRY)
    assert {p["name"] for p in methods[list(REGISTRY).index("hosvd")]["params"]} == {
        "eps", "rank", "budget_bytes"}
    for page in ("/", "/experiments/new", "/compare", "/runs/abc"):
        response = client.get(page)
        assert response.status_code == 200 and "<header>" in response.text
        assert not REMOTE.search(response.text)
    for asset in ("api.js", "charts.js", "new.js", "run.js", "compare.js", "style.css"):
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200 and not REMOTE.search(response.text)
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 404  # FastAPI's would load scripts from a CDN


def test_a_run_that_cannot_start_fails_and_the_queue_goes_on(tmp_path):
    settings = {"max_concurrent_runs": 1, "run_command": [str(tmp_path / "no-such-edgefed")]}
    app = create_app(Settings(data_dir=tmp_path, cache_max_stale_s=0.0, **settings))
    with TestClient(app, base_url=BASE) as c:
        experiment = create(c)
        first, second = (c.post(f"/api/experiments/{experiment['id']}/launch").json()["id"]
                         for _ in range(2))
        for run_id in (first, second):
            run = wait_for(lambda run_id=run_id: (r := c.get(f"/api/runs/{run_id}").json()["run"])
                           ["status"] == "failed" and r, 30, "the run to fail")
            assert "runner error" in run["message"] and "no-such-edgefed" in run["message"]
        assert c.get("/api/info").status_code == 200


def test_experiment_ids_are_never_reused_after_a_delete(tmp_path):
    with make_client(tmp_path) as c:
        first, last = create(c)["id"], create(c)["id"]
        assert c.delete(f"/api/experiments/{last}").status_code == 204
        assert create(c)["id"] == last + 1
    with make_client(tmp_path) as c:  # nor after a restart
        assert c.delete(f"/api/experiments/{last + 1}").status_code == 204
        assert create(c)["id"] == last + 2 and first < last


def test_upsert_on_postgresql_and_on_dialects_without_one(tmp_path, monkeypatch):
    """PostgreSQL gets the same ``ON CONFLICT .. DO UPDATE`` as SQLite; a dialect without a
    native upsert (none here: forced) updates, and inserts when nothing matched."""
    statement = store._native_upsert("postgresql", ClientRow.__table__,
                                     ("round", "phase", "partition_id"), ("status", "reason"))
    sql = str(statement.compile(dialect=postgresql.dialect()))
    assert "ON CONFLICT (run_id, round, phase, partition_id) DO UPDATE SET status = " \
           "excluded.status, reason = excluded.reason" in sql

    monkeypatch.setattr(store, "NATIVE_UPSERT", {})
    with make_client(tmp_path) as client:
        run_id, headers = attach(client, create(client)["id"])
        post(client, run_id, headers, client_event(run_id, 1, 0, status="oom", reason="first"))
        post(client, run_id, headers, client_event(run_id, 1, 0, training_bytes=7))
        post(client, run_id, headers, client_event(run_id, 1, 1))
        rows = client.get(f"/api/runs/{run_id}/clients").json()
    assert [(r["partition_id"], r["status"], r["training_bytes"]) for r in rows] == [
        (0, "ok", 7), (1, "ok", None)]


def test_startup_heap_is_frozen_so_full_collections_stay_short():
    """After start-up the collector tracks only what requests create, not torch's ~290,000
    objects (a full collection of those paused every request for 150-220 ms)."""
    probe = ("import gc; from server.dashboard.app import settle; settle(); "
             "print(gc.get_freeze_count(), len(gc.get_objects()))")
    frozen, tracked = map(int, subprocess.run([sys.executable, "-c", probe], check=True,
                                              capture_output=True, text=True, cwd=REPO,
                                              timeout=120).stdout.split())
    assert frozen > 100_000 and tracked < 1_000
