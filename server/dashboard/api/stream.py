"""Live event stream (Server-Sent Events) of one run: the broker's in-memory feed, or the stored
event log for a reader further behind.

Each message is ``id: <event id>``, ``event: client|round|state`` and ``data: <Event JSON>``; a
reader resumes with ``?after=<id>`` or the ``Last-Event-ID`` header (EventSource does this on
reconnect). When the run has ended and everything is sent, an ``end`` event closes the stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from server.dashboard.db import Database
from server.dashboard.deps import PROBLEMS, RunId, Services, ServicesDep
from server.dashboard.models import EventRow, Run
from server.dashboard.queries import get_run

router = APIRouter(prefix="/api/runs", tags=["runs"], responses=PROBLEMS)
BATCH = 500
PING_S = 15.0
EventId = Annotated[int, Query(ge=0, le=2**62)]


def _read(db: Database, run_id: str, after: int) -> tuple[list[tuple[int, str, str]], bool]:
    with db.read() as session:
        query = (select(EventRow.id, EventRow.kind, EventRow.payload)
                 .where(EventRow.run_id == run_id, EventRow.id > after)
                 .order_by(EventRow.id).limit(BATCH))
        rows = [tuple(row) for row in session.execute(query)]
        run = session.get(Run, run_id)
        return rows, run is not None and run.active


async def _messages(services: Services, run_id: str, after: int) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    while not services.broker.closed:
        changed = services.broker.changed
        recent = services.broker.recent(run_id, after)
        if recent is None:  # further back than the live feed: the stored log
            rows, active = await run_in_threadpool(_read, services.db, run_id, after)
        else:
            events, active = recent
            rows = [(e.id, e.kind, e.payload) for e in events[:BATCH]]
        for event_id, kind, payload in rows:
            yield f"id: {event_id}\nevent: {kind}\ndata: {payload}\n\n"
            after = event_id
        if len(rows) == BATCH:
            continue
        if not active:
            yield "event: end\ndata: {}\n\n"
            return
        if not await services.broker.wait(changed, PING_S):
            yield ": ping\n\n"


@router.get(
    "/{run_id}/stream", response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "event stream"}},
)
async def stream_events(
    run_id: RunId, services: ServicesDep, after: EventId = 0,
    last_event_id: Annotated[str | None, Header(
        max_length=64, description="an event id the server sent (EventSource's reconnect); "
        "anything else is ignored")] = None,
) -> StreamingResponse:
    """Every event after ``after`` (or ``Last-Event-ID``), then new ones as they arrive."""

    def exists() -> None:
        with services.db.read() as session:
            get_run(session, run_id)

    await run_in_threadpool(exists)
    resume = last_event_id.strip() if last_event_id else ""
    start = max(after, int(resume) if resume.isascii() and resume.isdigit()
                and int(resume) <= 2**62 else 0)
    return StreamingResponse(
        _messages(services, run_id, start), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
