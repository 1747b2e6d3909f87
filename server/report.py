"""Event reporting: every record goes to ``<out>/events.jsonl`` and, if configured, to a URL.

The JSON-lines file is the run's own record (the CLI's progress bar and closing table read it,
and the dashboard imports it after an outage); the POST feeds the dashboard live. Reporting
trouble is logged once per kind and never raised: a run must not fail because the dashboard is
down or slow.

Delivery is at-least-once and in order: a line the dashboard did not acknowledge stays in an
in-memory spool (at most ``SPOOL_MAX`` lines, oldest dropped first: the file still has them) and
is re-sent before newer lines, after a back-off that doubles from ``RETRY_MIN_S`` to
``RETRY_MAX_S``; ``close()`` tries once more. The dashboard stores an event once however often it
arrives (it keys events by their content). A 4xx other than 408/429 is final: that line is
dropped (re-sending the same bytes cannot succeed).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

import httpx

from common.events import Event, RoundResult, RunState
from common.record import ClientRecord

EVENTS_FILE = "events.jsonl"
POST_TIMEOUT_S = 2.0
SPOOL_MAX = 10_000
RETRY_MIN_S = 0.5
RETRY_MAX_S = 15.0
RETRIABLE = {408, 425, 429}

log = logging.getLogger(__name__)


class Reporter:
    """Appends events of run ``run_id`` to ``out_dir/events.jsonl`` and POSTs them to ``url``."""

    def __init__(self, run_id: str, out_dir: str | Path, url: str = "", token: str = "") -> None:
        self.run_id = run_id
        self.path = Path(out_dir) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(timeout=POST_TIMEOUT_S, headers=headers) if url else None
        self._warned: set[str] = set()
        self.spool: deque[str] = deque(maxlen=SPOOL_MAX)
        self._backoff_s = 0.0
        self._retry_at = 0.0

    def emit(
        self,
        *,
        client: ClientRecord | None = None,
        round: RoundResult | None = None,  # noqa: A002 - the envelope's field name
        state: RunState | None = None,
    ) -> Event:
        """Record one event (exactly one of ``client``, ``round``, ``state``)."""
        event = Event(run_id=self.run_id, client=client, round=round, state=state)
        line = event.model_dump_json()
        with self.path.open("a") as f:
            f.write(line + "\n")
        if self._http is not None:
            self.spool.append(line)
            if time.monotonic() >= self._retry_at:
                self.flush()
        return event

    def flush(self) -> bool:
        """POST spooled lines in order until one fails to arrive; True once the spool is empty."""
        while self.spool:
            if not self._deliver(self.spool[0]):
                self._backoff_s = min(RETRY_MAX_S, max(RETRY_MIN_S, 2 * self._backoff_s))
                self._retry_at = time.monotonic() + self._backoff_s
                return False
            self.spool.popleft()
        self._backoff_s = self._retry_at = 0.0
        return True

    def _deliver(self, line: str) -> bool:
        """True when the line is done with: stored, or refused for good (logged)."""
        try:
            response = self._http.post(
                self.url, content=line, headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as err:
            self._warn(type(err).__name__, f"reporting to {self.url} failed ({err}); "
                       "events are kept and re-sent, the run goes on")
            return False
        code = response.status_code
        if code < 400:
            return True
        if code >= 500 or code in RETRIABLE:
            self._warn(str(code), f"{self.url} answered {code}; events are kept and re-sent")
            return False
        self._warn(str(code), f"{self.url} refused an event for good ({code} "
                   f"{response.text[:300]}); it stays in {self.path}")
        return True

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("%s", message)

    def close(self) -> None:
        """One last delivery attempt of what is spooled (the file keeps it either way)."""
        if self._http is not None:
            if self.spool and not self.flush():
                log.warning("%d events not delivered to %s; they are in %s",
                            len(self.spool), self.url, self.path)
            self._http.close()


def read_events(out_dir: str | Path, offset: int = 0) -> tuple[list[Event], int]:
    """Complete events in ``out_dir/events.jsonl`` from byte ``offset``; returns the new offset.

    A trailing partial line (being written) is left for the next call.
    """
    path = Path(out_dir) / EVENTS_FILE
    if not path.exists():
        return [], offset
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    events = [Event.model_validate_json(line) for line in data[:end].splitlines() if line]
    return events, offset + end
