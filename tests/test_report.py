"""Event reporting: the JSON-lines record, the POST to the dashboard (and surviving its absence),
and the ServerApp's throttled status line."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from common.events import RoundResult
from server.app import StatusLine
from server.report import Reporter, read_events


class _Sink(BaseHTTPRequestHandler):
    received: list[tuple[str, dict]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.headers.get("Authorization", ""), json.loads(body)))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[str]:
    """A real HTTP endpoint on 127.0.0.1 recording what is POSTed; stopped afterwards."""
    _Sink.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ingest"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_events_are_written_and_posted_with_the_token(tmp_path: Path, sink: str) -> None:
    reporter = Reporter("run-1", tmp_path, sink, "secret")
    reporter.emit(round=RoundResult(round=0, accuracy=0.5, loss=1.2))
    reporter.close()
    events, offset = read_events(tmp_path)
    assert [e.round.accuracy for e in events] == [0.5]
    assert offset == (tmp_path / "events.jsonl").stat().st_size
    assert _Sink.received == [("Bearer secret", json.loads(events[0].model_dump_json()))]


def test_an_unreachable_dashboard_never_fails_the_run(tmp_path: Path) -> None:
    reporter = Reporter("run-1", tmp_path, "http://127.0.0.1:9/ingest")
    for r in range(3):
        reporter.emit(round=RoundResult(round=r, accuracy=0.1 * r, loss=1.0))
    reporter.close()
    assert [e.round.round for e in read_events(tmp_path)[0]] == [0, 1, 2]


def test_status_line_is_throttled_unless_forced(tmp_path: Path) -> None:
    status = StatusLine(Reporter("run-1", tmp_path), every_s=3600)
    for step in range(1, 50):
        status.pretrain_step(step, 49, 0.5)
    status("round 1: 20 clients training", force=True)
    states = [e.state for e in read_events(tmp_path)[0]]
    assert [s.status for s in states] == ["running", "running"]
    assert states[0].message == "pretraining on the server's half: step 1/49, loss 0.500"
    assert states[1].message == "round 1: 20 clients training"
