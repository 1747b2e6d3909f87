"""The read cache: one rebuild at a time per URL, the previous body meanwhile, never older
data than the request once no rebuild is under way."""

from __future__ import annotations

import threading

from server.dashboard.cache import ResponseCache


def test_fresh_entries_are_reused_and_stale_ones_rebuilt():
    cache = ResponseCache()
    builds = []

    def build(body: bytes):
        return lambda: builds.append(body) or body

    assert cache.lookup("/a", 1) is None
    assert cache.build("/a", 1, build(b"one")) == (1, b"one")
    assert cache.lookup("/a", 1) == (1, b"one")
    assert cache.build("/a", 1, build(b"again")) == (1, b"one")  # someone built it already
    assert cache.lookup("/a", 2) is None  # the data moved on and nobody is rebuilding
    assert cache.build("/a", 2, build(b"two")) == (2, b"two")
    assert builds == [b"one", b"two"]


def test_readers_get_the_previous_body_while_a_rebuild_runs():
    cache = ResponseCache()
    cache.build("/a", 1, lambda: b"old")
    started, release = threading.Event(), threading.Event()

    def slow() -> bytes:
        started.set()
        release.wait(10)
        return b"new"

    builder = threading.Thread(target=cache.build, args=("/a", 2, slow))
    builder.start()
    assert started.wait(10)
    assert cache.lookup("/a", 2) == (1, b"old")
    release.set()
    builder.join(10)
    assert cache.lookup("/a", 2) == (2, b"new")


def test_the_cache_is_bounded():
    cache = ResponseCache(size=2)
    for i in range(3):
        cache.build(f"/{i}", 1, lambda i=i: str(i).encode())
    assert cache.lookup("/0", 1) is None and cache.lookup("/2", 1) == (1, b"2")
