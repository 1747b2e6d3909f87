"""Event reporting: the JSON-lines record, the POST to the dashboard (and surviving its absence),
and the ServerApp's throttled status line."""

from __future__ import annotations

import json
import socket
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
    answers: list[int] = []  # status codes to answer first (then 202), without storing

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        code = self.answers.pop(0) if self.answers else 202
        if code == 202:
            self.received.append((self.headers.get("Authorization", ""), json.loads(body)))
        self.send_response(code)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[str]:
    """A real HTTP endpoint on 127.0.0.1 recording what is POSTed; stopped afterwards."""
    _Sink.received = []
    _Sink.answers = []
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


def test_events_not_acknowledged_are_re_sent_in_order(tmp_path: Path, sink: str) -> None:
    _Sink.answers = [503, 429]  # down, then busy: both retriable
    reporter = Reporter("run-1", tmp_path, sink)
    for r in range(3):
        reporter.emit(round=RoundResult(round=r, accuracy=0.1 * r, loss=1.0))
    assert _Sink.received == [] and len(reporter.spool) == 3  # inside the back-off
    assert reporter.flush() is False  # 429 on the retry
    reporter.close()  # the last try delivers everything, oldest first
    assert [body["round"]["round"] for _, body in _Sink.received] == [0, 1, 2]
    assert not reporter.spool


def test_a_dashboard_that_comes_back_gets_what_it_missed(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    reporter = Reporter("run-1", tmp_path, f"http://127.0.0.1:{port}/ingest")
    reporter.emit(round=RoundResult(round=0, accuracy=0.5, loss=1.0))  # refused: spooled
    _Sink.received, _Sink.answers = [], []
    server = ThreadingHTTPServer(("127.0.0.1", port), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert reporter.flush()
        reporter.emit(round=RoundResult(round=1, accuracy=0.6, loss=1.0))
        reporter.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert [body["round"]["round"] for _, body in _Sink.received] == [0, 1]


def test_a_refused_event_is_dropped_not_retried(tmp_path: Path, sink: str) -> None:
    _Sink.answers = [422]
    reporter = Reporter("run-1", tmp_path, sink)
    reporter.emit(round=RoundResult(round=0, accuracy=0.5, loss=1.0))
    reporter.emit(round=RoundResult(round=1, accuracy=0.6, loss=1.0))
    reporter.close()
    assert [body["round"]["round"] for _, body in _Sink.received] == [1]
    assert len(read_events(tmp_path)[0]) == 2  # the file keeps both


def test_status_line_is_throttled_unless_forced(tmp_path: Path) -> None:
    status = StatusLine(Reporter("run-1", tmp_path), every_s=3600)
    for step in range(1, 50):
        status.pretrain_step(step, 49, 0.5)
    status("round 1: 20 clients training", force=True)
    states = [e.state for e in read_events(tmp_path)[0]]
    assert [s.status for s in states] == ["running", "running"]
    assert states[0].message == "pretraining on the server's half: step 1/49, loss 0.500"
    assert states[1].message == "round 1: 20 clients training"
