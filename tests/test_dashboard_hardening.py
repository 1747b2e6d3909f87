"""What an attacker (or a broken client) may send: no input gets a 5xx, every answer carries
the security headers, metrics are bounded, the launch queue is bounded, CSV cells are inert,
run tokens stay private."""

from __future__ import annotations

import csv
import io
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from server.dashboard.security import SECURITY_HEADERS
from server.runner import write_private
from tests.dashboard_support import tiny_config
from tests.test_dashboard_api import attach, client_event, create, make_client, post


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        yield c


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@pytest.mark.parametrize("depth", [100, 500, 700, 900, 988, 989, 990, 5000, 200_000])
def test_deeply_nested_json_is_refused_without_a_server_error(client, depth):
    experiment = create(client)["id"]
    run_id, headers = attach(client, experiment)
    bodies = {
        "/api/experiments/validate": f'{{"name": {nested(depth)}}}',
        "/api/experiments": f'{{"fleet": [{{"device": {nested(depth)}}}]}}',
        f"/api/experiments/{experiment}/launch": f'{{"engine": {nested(depth)}}}',
        f"/api/runs/{run_id}/events": f'{{"run_id": "{run_id}", "client": {nested(depth)}}}',
    }
    for path, body in bodies.items():
        response = client.post(path, content=body, headers={
            **headers, "Content-Type": "application/json"})
        assert response.status_code in (400, 413, 422), (path, response.status_code)
        assert "detail" in response.text


def test_security_headers_on_every_kind_of_answer(client):
    answers = [
        client.get("/"), client.get("/runs/abc"), client.get("/static/api.js"),
        client.get("/api/info"), client.get("/api/runs/nope"),  # 404
        client.post("/api/experiments", json={"rounds": -1}),  # 422
        client.post("/api/experiments", json=tiny_config(),
                    headers={"Origin": "http://evil.example"}),  # refused by the guard
        client.get("/api/info", headers={"Host": "evil.example"}),  # DNS rebinding
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 404, 422, 403, 403]
    for answer in answers:
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers[name] == value
    csp = SECURITY_HEADERS["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]


@pytest.mark.parametrize(("part", "field", "value"), [
    ("client", "accuracy", "1e308"),
    ("client", "accuracy", "1.5"),
    ("client", "accuracy", "-0.1"),
    ("client", "train_loss", "1e309"),  # overflows to inf when parsed
    ("client", "eps", "2"),
    ("client", "wall_s", "1e300"),
    ("round", "accuracy", "1e308"),
    ("round", "loss", "-1e999"),
])
def test_metrics_out_of_range_or_not_finite_are_refused(client, part, field, value):
    run_id, headers = attach(client, create(client)["id"])
    if part == "client":
        record = '{"round": 1, "node_id": 1, "partition_id": 0, "device": "rpi5", ' \
                 f'"status": "ok", "{field}": {value}}}'
    else:
        fields = {"accuracy": "0.5", "loss": "1.0", field: value}
        record = '{"round": 1, ' + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"
    response = client.post(f"/api/runs/{run_id}/events",
                           content=f'{{"run_id": "{run_id}", "{part}": {record}}}',
                           headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert field in str(response.json()["detail"][0]["loc"])
    detail = client.get(f"/api/runs/{run_id}").json()
    assert detail["clients"] == [] and detail["rounds"] == []


def test_a_full_launch_queue_answers_429_with_retry_after(tmp_path):
    with make_client(tmp_path, max_queued_runs=3) as c:  # the queue is paused: nothing starts
        experiment = create(c)["id"]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(
                lambda _: c.post(f"/api/experiments/{experiment}/launch"), range(20)))
        codes = sorted(a.status_code for a in answers)
        assert codes == [202] * 3 + [429] * 17
        refused = next(a for a in answers if a.status_code == 429)
        assert int(refused.headers["Retry-After"]) > 0
        assert "queue is full" in refused.json()["detail"]
        assert len(c.get("/api/runs").json()) == 3  # a refused launch leaves no run behind
        run_id, headers = attach(c, experiment)  # outside-fed runs do not queue
        assert run_id


def test_csv_cells_that_would_start_a_formula_are_escaped(client):
    run_id, headers = attach(client, create(client)["id"])
    hostile = {"device": "=HYPERLINK(\"http://evil.example\",\"x\")",
               "reason": "=cmd|' /C calc'!A0", "method": "@SUM(A1)"}
    post(client, run_id, headers, client_event(run_id, 1, 0, train_loss=-0.5, **hostile))
    post(client, run_id, headers, client_event(run_id, 1, 1, reason="+1", device="-2"))
    text = client.get(f"/api/runs/{run_id}/export", params={"format": "csv"}).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["device"] == "'" + hostile["device"]
    assert rows[0]["reason"] == "'" + hostile["reason"]
    assert rows[0]["method"] == "'" + hostile["method"]
    assert rows[0]["train_loss"] == "-0.5"  # numbers stay numbers
    assert (rows[1]["reason"], rows[1]["device"]) == ("'+1", "'-2")
    for line in text.splitlines()[1:]:
        assert not any(c.startswith(("=", "+", "@")) for c in next(csv.reader([line])))


def test_run_config_with_the_token_is_owner_only(tmp_path):
    path = tmp_path / "run-config.toml"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, 'report-token = "secret"\n')
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == 'report-token = "secret"\n'
    fresh = tmp_path / "fresh.toml"
    write_private(fresh, "x")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
