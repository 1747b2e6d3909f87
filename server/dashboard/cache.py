"""Serialised read responses, shared by all readers, with one rebuild at a time per URL.

Every committed write bumps :attr:`Database.version`; writes that are not a run's streamed
events (creating, launching, cancelling, state changes) also bump ``action_version``. A body is
served as is when

- it was built at the current version; or
- a rebuild of it is under way (stale-while-revalidate: readers arriving meanwhile get the
  previous body at once instead of queueing behind the rebuild); or
- it already holds the last action and is younger than ``max_stale_s``: only streamed events
  are missing, and a run's snapshot carries its ``last_event_id``, from which the live stream
  resumes, so such a body loses nothing.

Otherwise the first reader rebuilds it (in a worker thread). Under a steady stream of events a
hot URL is therefore rebuilt at most about once per ``max_stale_s``, not back to back, and what
a reader did itself (an action) is always in what it reads next. Each body carries the version
it was built at as its ETag (``304 Not Modified`` when the reader has it).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request, Response
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

MAX_STALE_S = 0.5


@dataclass(frozen=True)
class Entry:
    """A serialised body and the data version it was built at."""

    version: int
    body: bytes
    built_at: float = field(default_factory=time.monotonic)


class ResponseCache:
    def __init__(self, size: int = 256, max_stale_s: float = MAX_STALE_S) -> None:
        self.size = size
        self.max_stale_s = max_stale_s
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._building: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def lookup(self, key: str, version: int, action_version: int | None = None) -> Entry | None:
        """The entry if it may be served for data at ``version`` (see the module docstring)."""
        action_version = version if action_version is None else action_version
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            building = self._building.get(key)
            young = (entry.version >= action_version
                     and time.monotonic() - entry.built_at < self.max_stale_s)
            if entry.version >= version or young or (building is not None and building.locked()):
                self._entries.move_to_end(key)
                return entry
            return None

    def build(self, key: str, version: int, build: Callable[[], bytes]) -> Entry:
        """Build the body for ``version`` unless another builder got there first."""
        with self._lock:
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                entry = self._entries.get(key)
            if entry is not None and entry.version >= version:
                return entry
            entry = Entry(version, build())
            with self._lock:
                self._entries[key] = entry
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._building.pop(self._entries.popitem(last=False)[0], None)
            return entry


async def cached_json(request: Request, build: Callable[[], Any]) -> Response:
    """``build()`` (models, lists of models, dicts) as JSON, cached per URL and data version.

    A servable entry is answered on the event loop; only a rebuild goes to a worker thread
    (database).
    """
    services = request.app.state.services
    cache: ResponseCache = services.cache
    key = f"{request.url.path}?{request.url.query}"
    db = services.db
    version = db.version
    entry = cache.lookup(key, version, db.action_version)
    if entry is None:
        entry = await run_in_threadpool(cache.build, key, version, lambda: to_json(build()))
    etag = f'"v{entry.version}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}  # always revalidate, often 304
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(entry.body, media_type="application/json", headers=headers)
