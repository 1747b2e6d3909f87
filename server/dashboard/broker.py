"""Wakes live-stream readers when a run's event log grows.

Writers (request threads, runner threads) call :meth:`Broker.publish` after their commit;
readers ``await`` :meth:`Broker.wait` on the server's event loop and then read the log from the
database, so a reader that was away, or a new one, misses nothing: the log is the truth, the
broker only says "look again".
"""

from __future__ import annotations

import asyncio


class Broker:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self.closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the loop the readers run on (called at startup)."""
        self._loop = loop
        self._changed = asyncio.Event()
        self.closed = False

    def publish(self) -> None:
        """Thread-safe: wake every waiting reader."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    def close(self) -> None:
        """Shutdown: wake every reader for the last time; streams then end."""
        self.closed = True
        self.publish()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self, timeout: float) -> bool:
        """Until the next publish (True) or ``timeout`` seconds (False)."""
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            return False
        return True
