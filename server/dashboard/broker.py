"""Live feed of each run's events, for the event streams, kept in memory.

Writers hand the events of each committed transaction to :meth:`Broker.publish` while they
still hold the database's writer lock, so the feed sees events in commit (= id) order. Readers,
on the server's event loop, take what follows their last id from the feed (no database, no
worker thread) and fall back to the stored log when they are further behind than the feed
reaches: the log is the truth, the feed a window onto its newest part.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import NamedTuple

ACTIVE = ("queued", "running")


class FeedEvent(NamedTuple):
    run_id: str
    id: int
    kind: str
    payload: str
    status: str  # the run's status once this event was stored


@dataclass
class _Feed:
    floor: int  # events of the run with an id <= floor may be missing from ``events``
    status: str
    events: deque[FeedEvent] = field(default_factory=deque)


class Broker:
    def __init__(self, per_run: int = 4096, runs: int = 64) -> None:
        self.per_run = per_run
        self.runs = runs
        self.closed = False
        self._feeds: OrderedDict[str, _Feed] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the loop the readers run on (called at startup)."""
        self._loop = loop
        self._changed = asyncio.Event()
        self.closed = False

    def publish(self, events: list[FeedEvent]) -> None:
        """Thread-safe; call in commit order. Readers wake up."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._add, events)

    def close(self) -> None:
        """Shutdown: wake every reader for the last time; streams then end."""
        self.closed = True
        self.publish([])

    def recent(self, run_id: str, after: int) -> tuple[list[FeedEvent], bool] | None:
        """The run's events after id ``after`` and whether it is still active, or None when
        the feed does not reach back that far (read the stored log instead)."""
        feed = self._feeds.get(run_id)
        if feed is None or after < feed.floor:
            return None
        return [e for e in feed.events if e.id > after], feed.status in ACTIVE

    def _add(self, events: list[FeedEvent]) -> None:
        for event in events:
            feed = self._feeds.get(event.run_id)
            if feed is None:
                feed = self._feeds[event.run_id] = _Feed(floor=event.id - 1, status=event.status)
                while len(self._feeds) > self.runs:
                    self._feeds.popitem(last=False)
            self._feeds.move_to_end(event.run_id)
            feed.events.append(event)
            feed.status = event.status
            if len(feed.events) > self.per_run:
                feed.floor = feed.events.popleft().id
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    @property
    def changed(self) -> asyncio.Event:
        """Set by the next publish: take it *before* reading, then :meth:`wait` on it, so a
        publish between the read and the wait is not missed."""
        return self._changed

    @staticmethod
    async def wait(changed: asyncio.Event, timeout: float) -> bool:
        """Until ``changed`` is set (True) or ``timeout`` seconds (False)."""
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            return False
        return True
