"""Event reporting: every record goes to ``<out>/events.jsonl`` and, if configured, to a URL.

The JSON-lines file is the run's own record (the CLI's progress bar and closing table read it);
the POST feeds the dashboard. Reporting trouble is logged once per kind and never raised: a run
must not fail because the dashboard is down or slow.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx

from common.events import Event, RoundResult, RunState
from common.record import ClientRecord

EVENTS_FILE = "events.jsonl"
POST_TIMEOUT_S = 2.0

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
            self._post(line)
        return event

    def _post(self, line: str) -> None:
        try:
            response = self._http.post(
                self.url, content=line, headers={"Content-Type": "application/json"}
            )
            response.raise_for_status()
        except httpx.HTTPError as err:
            kind = type(err).__name__
            if kind not in self._warned:
                self._warned.add(kind)
                log.warning("reporting to %s failed (%s); the run goes on", self.url, err)

    def close(self) -> None:
        if self._http is not None:
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
