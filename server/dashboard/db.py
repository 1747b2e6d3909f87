"""Database access: one engine, read sessions for anyone, write sessions one at a time.

SQLite (the default) runs in WAL mode with ``synchronous=NORMAL``: readers never block the
writer, and a committed transaction survives a crash of this process (kill -9). Writers are
serialised by a lock inside the process, so a read-then-write transaction never meets another
writer's lock; ``busy_timeout`` covers writers in other processes. Opening a database migrates
its schema to the newest Alembic revision (``server.dashboard.migrations``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from server.dashboard.migrations import upgrade


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                   "busy_timeout=10000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL pragmas and their folder created."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Database:
    """Sessions on one engine; :meth:`write` holds the writer lock until commit."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock()
        self.version = 0  # commits made through this object (read caches key on it)
        self.action_version = 0  # the last commit that was not a streamed event
        upgrade(self.engine)  # the schema of models.py, in place for an older database

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def write(self, committed: Callable[[], None] | None = None,
              streamed: bool = False) -> Iterator[Session]:
        """A transaction committed on exit (rolled back on error): durable once this returns.
        After the commit, still under the lock, :attr:`version` moves on and ``committed()``
        runs (so what it announces is announced in commit order). ``streamed``: the write only
        stores a run's reported event, which live readers also get from the event stream
        (otherwise :attr:`action_version` moves on too)."""
        with self._write_lock:
            with self._sessions() as session, session.begin():
                yield session
            self.version += 1
            if not streamed:
                self.action_version = self.version
            if committed is not None:
                committed()

    def close(self) -> None:
        self.engine.dispose()
