"""Importing a run's own record, ``<run>/out/events.jsonl``, into the database.

The reporter POSTs each event as it happens, but the dashboard may be down meanwhile. The file
holds every event, so it is imported when a run ends, when a restarted dashboard finds the run,
and while it watches a run it re-attached to. :meth:`RunLog.ingest` is idempotent (an event is
keyed by its JSON's digest), so an event that arrived both ways is stored once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import ValidationError

from common.events import Event
from server.dashboard.store import NotFound, RunLog
from server.dashboard.validation import event_errors
from server.report import EVENTS_FILE

log = logging.getLogger(__name__)


class EventFile:
    """Complete lines of one run's ``events.jsonl``, imported from where the last call stopped."""

    def __init__(self, run_id: str, out_dir: Path) -> None:
        self.run_id = run_id
        self.path = out_dir / EVENTS_FILE
        self.offset = 0

    def import_into(self, runlog: RunLog) -> int:
        """Ingest the lines added since the last call; returns how many were read.

        A line that is not an event of this run, or that the API would refuse, is logged and
        skipped; a trailing partial line (being written) waits for the next call.
        """
        try:
            with self.path.open("rb") as file:
                file.seek(self.offset)
                data = file.read()
        except FileNotFoundError:
            return 0
        end = data.rfind(b"\n") + 1
        self.offset += end
        lines = [line for line in data[:end].splitlines() if line.strip()]
        try:
            for line in lines:
                self._ingest(runlog, line)
        except NotFound:  # the run was deleted meanwhile
            log.warning("%s: run %s is gone; nothing more imported", self.path, self.run_id)
        return len(lines)

    def _ingest(self, runlog: RunLog, line: bytes) -> None:
        try:
            event = Event.model_validate_json(line)
        except ValidationError as error:
            log.warning("%s: skipped a line that is not an event (%s)", self.path,
                        error.errors()[0]["msg"])
            return
        problems = event_errors(event, self.run_id)
        if problems:
            log.warning("%s: skipped an event: %s", self.path, problems[0]["msg"])
            return
        runlog.ingest(self.run_id, event)
