"""The read cache: one rebuild at a time per URL, the previous body meanwhile, never older
data than the request once no rebuild is under way, except for streamed events within
``max_stale_s``."""

from __future__ import annotations

import threading
import time

from server.dashboard.cache import ResponseCache


def test_fresh_entries_are_reused_and_stale_ones_rebuilt():
    cache = ResponseCache(max_stale_s=0)
    builds = []

    def build(body: bytes):
        return lambda: builds.append(body) or body

    assert cache.lookup("/a", 1) is None
    one = cache.build("/a", 1, build(b"one"))
    assert (one.version, one.body) == (1, b"one")
    assert cache.lookup("/a", 1) is one
    assert cache.build("/a", 1, build(b"again")) is one  # someone built it already
    assert cache.lookup("/a", 2) is None  # the data moved on and nobody is rebuilding
    assert cache.build("/a", 2, build(b"two")).body == b"two"
    assert builds == [b"one", b"two"]


def test_readers_get_the_previous_body_while_a_rebuild_runs():
    cache = ResponseCache(max_stale_s=0)
    cache.build("/a", 1, lambda: b"old")
    started, release = threading.Event(), threading.Event()

    def slow() -> bytes:
        started.set()
        release.wait(10)
        return b"new"

    builder = threading.Thread(target=cache.build, args=("/a", 2, slow))
    builder.start()
    assert started.wait(10)
    assert cache.lookup("/a", 2).body == b"old"
    release.set()
    builder.join(10)
    assert cache.lookup("/a", 2).body == b"new"


def test_the_cache_is_bounded():
    cache = ResponseCache(size=2)
    for i in range(3):
        cache.build(f"/{i}", 1, lambda i=i: str(i).encode())
    assert cache.lookup("/0", 1) is None and cache.lookup("/2", 1).body == b"2"


def test_streamed_events_may_be_missing_for_max_stale_s_actions_never():
    cache = ResponseCache(max_stale_s=0.2)
    cache.build("/run", 5, lambda: b"at 5")
    assert cache.lookup("/run", 9, action_version=5).body == b"at 5"  # only events since
    assert cache.lookup("/run", 9, action_version=6) is None  # an action since: rebuild
    time.sleep(0.25)
    assert cache.lookup("/run", 9, action_version=5) is None  # too old now
