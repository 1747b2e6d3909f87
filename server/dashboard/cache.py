"""Serialised read responses, shared by all readers, with one rebuild at a time per URL.

Every committed write bumps :attr:`Database.version`. A body built at the current version is
served as is; when the data has moved on, the first reader rebuilds it (in a worker thread)
while readers arriving meanwhile get the previous body at once instead of queueing behind the
rebuild (stale-while-revalidate): under a steady stream of events the run page's snapshot is
rebuilt back to back, not once per reader. Each body carries the version it was built at as
its ETag (``304 Not Modified`` when the reader has it), and a run's snapshot carries its
``last_event_id``, from which the live stream resumes, so a slightly older snapshot loses
nothing. A reader alone (no rebuild under way) always gets data as fresh as its request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

Entry = tuple[int, bytes]  # (data version it was built at, body)


class ResponseCache:
    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._building: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def lookup(self, key: str, version: int) -> Entry | None:
        """The entry if current, the previous one while a rebuild is under way, else None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            building = self._building.get(key)
            if entry[0] >= version or (building is not None and building.locked()):
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
            if entry is not None and entry[0] >= version:
                return entry
            entry = (version, build())
            with self._lock:
                self._entries[key] = entry
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._building.pop(self._entries.popitem(last=False)[0], None)
            return entry


async def cached_json(request: Request, build: Callable[[], Any]) -> Response:
    """``build()`` (models, lists of models, dicts) as JSON, cached per URL and data version.

    A current or being-rebuilt entry is answered on the event loop; only a rebuild goes to a
    worker thread (database).
    """
    services = request.app.state.services
    cache: ResponseCache = services.cache
    key = f"{request.url.path}?{request.url.query}"
    version = services.db.version
    entry = cache.lookup(key, version)
    if entry is None:
        entry = await run_in_threadpool(cache.build, key, version, lambda: to_json(build()))
    etag = f'"v{entry[0]}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}  # always revalidate, often 304
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(entry[1], media_type="application/json", headers=headers)
