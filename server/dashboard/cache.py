"""Serialised read responses, shared by all readers until the data changes.

Every committed write bumps :attr:`Database.version`; a cached body is served only while the
version it was built at is current, so a reader never sees data older than the last write it
could have observed. Concurrent misses for one key build it once (the others wait), and the
version is the ETag, so a reader that has it gets ``304 Not Modified`` without a body.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool


class ResponseCache:
    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._building: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def peek(self, key: str, version: int) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != version:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def get(self, key: str, version: int, build: Callable[[], bytes]) -> bytes:
        body = self.peek(key, version)
        if body is not None:
            return body
        with self._lock:
            building = self._building.setdefault(key, threading.Lock())
        with building:
            body = self.peek(key, version)
            if body is None:
                body = build()
                with self._lock:
                    self._entries[key] = (version, body)
                    self._entries.move_to_end(key)
                    while len(self._entries) > self.size:
                        self._entries.popitem(last=False)
        return body


async def cached_json(request: Request, build: Callable[[], Any]) -> Response:
    """``build()`` (models, lists of models, dicts) as JSON, cached per URL and data version.

    A hit is answered on the event loop; only a miss goes to a worker thread (database).
    """
    services = request.app.state.services
    version = services.db.version
    etag = f'"v{version}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}  # always revalidate, often 304
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    key = f"{request.url.path}?{request.url.query}"
    cache: ResponseCache = services.cache
    body = cache.peek(key, version)
    if body is None:
        body = await run_in_threadpool(cache.get, key, version, lambda: to_json(build()))
    return Response(body, media_type="application/json", headers=headers)
