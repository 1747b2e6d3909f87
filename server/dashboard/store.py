"""Every change to experiments and runs: committed first, then live readers are woken.

State rules: ``queued -> running -> finished | failed | cancelled``; a run the dashboard lost
track of (restart, shutdown) becomes ``interrupted``. A terminal status is never overwritten;
later events are still stored (nothing acknowledged is dropped).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from sqlalchemy import Row, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from common.config import Engine, ExperimentConfig
from common.events import Event, RunState, RunStatus
from common.record import ClientRecord
from server.dashboard.broker import Broker, FeedEvent
from server.dashboard.db import Database
from server.dashboard.models import ACTIVE, ClientRow, EventRow, Experiment, RoundRow, Run


class NotFound(LookupError):
    """404: ``what`` does not exist."""


class Conflict(RuntimeError):
    """409: the request is valid but the resource's state forbids it."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def client_key(result: ClientRecord) -> dict:
    return {"round": result.round, "phase": result.phase, "partition_id": result.partition_id}


def client_row_values(result: ClientRecord) -> dict:
    return {**result.model_dump(), "node_id": str(result.node_id)}


class RunLog:
    """Writes go through :class:`Database.write`; the :class:`Broker` gets the logged events
    after each commit."""

    def __init__(self, db: Database, broker: Broker) -> None:
        self.db = db
        self.broker = broker

    @contextmanager
    def _write(self, streamed: bool = False) -> Iterator[tuple[Session, list[FeedEvent]]]:
        """A write transaction; the events it logs go to the live feed once committed."""
        logged: list[FeedEvent] = []
        with self.db.write(lambda: self.broker.publish(logged), streamed) as session:
            yield session, logged

    def create_experiment(self, config: ExperimentConfig) -> int:
        with self._write() as (session, logged):
            experiment = Experiment(
                name=config.name, config_json=config.model_dump_json(), created_at=time.time()
            )
            session.add(experiment)
            session.flush()
        return experiment.id

    def delete_experiment(self, experiment_id: int) -> list[str]:
        """Delete an experiment and its runs' data; returns the deleted run ids."""
        with self._write() as (session, logged):
            experiment = session.get(Experiment, experiment_id)
            if experiment is None:
                raise NotFound(f"experiment {experiment_id} not found")
            active = [run.id for run in experiment.runs if run.active]
            if active:
                raise Conflict(f"experiment {experiment_id} has active runs: {', '.join(active)}")
            run_ids = [run.id for run in experiment.runs]
            session.delete(experiment)
        return run_ids

    def create_run(self, experiment_id: int, engine: Engine, external: bool) -> tuple[str, str]:
        """A queued run and its ingestion token (only the token's hash is stored)."""
        token = secrets.token_urlsafe(32)
        with self._write() as (session, logged):
            if session.get(Experiment, experiment_id) is None:
                raise NotFound(f"experiment {experiment_id} not found")
            run = Run(
                id=uuid.uuid4().hex, experiment_id=experiment_id, engine=engine,
                external=external, status="queued", message="", token_hash=hash_token(token),
                created_at=time.time(),
            )
            session.add(run)
            session.flush()
            queued = Event(run_id=run.id, state=RunState(status="queued"))
            self._log(session, logged, queued, {}, "queued")
        return run.id, token

    def ingest(self, run_id: str, event: Event) -> int:
        """Store one reported event; returns its log id once it is committed.

        Idempotent: an event already stored (same JSON, so same digest) changes nothing and
        returns the id it was stored under. Core statements, not ORM objects: this is the hot
        path (every client of every round).
        """
        payload = event.model_dump_json()
        with self._write(streamed=event.state is None) as (session, logged):
            status, started_at = self._state(session, run_id)
            known = session.connection().execute(
                _KNOWN, {"k_run_id": run_id, "k_digest": digest(payload)}).scalar()
            if known is not None:
                return known
            if event.client is not None:
                self._upsert(session, ClientRow, run_id, client_key(event.client),
                             client_row_values(event.client))
            elif event.round is not None:
                self._upsert(session, RoundRow, run_id, {"round": event.round.round},
                             event.round.model_dump())
            state = event.state or RunState(status="running")  # first data: it runs
            moved = None
            if event.state is not None or status == "queued":
                moved = transition(status, started_at, state.status, state.message)
            event_id = self._log(session, logged, event, moved or {},
                                 (moved or {}).get("status", status), payload)
        return event_id

    def set_state(self, run_id: str, status: RunStatus, message: str = "", *,
                  pid: int | None = None, exit_code: int | None = None) -> bool:
        """A state change decided here (runner, restart); False if the run had already ended
        (``pid`` and ``exit_code`` are recorded either way)."""
        with self._write() as (session, logged):
            now, started_at = self._state(session, run_id)
            values = {k: v for k, v in (("pid", pid), ("exit_code", exit_code)) if v is not None}
            moved = transition(now, started_at, status, message)
            if moved is not None:
                state = RunState(status=status, message=message[-4000:])
                self._log(session, logged, Event(run_id=run_id, state=state),
                          {**values, **moved}, status)
            elif values:
                session.execute(update(Run).where(Run.id == run_id).values(**values))
        return moved is not None

    def active_runs(self) -> list[Row]:
        """Queued and running runs, oldest first: ``id``, ``pid``, ``status``, ``external``."""
        query = (select(Run.id, Run.pid, Run.status, Run.external)
                 .where(Run.status.in_(ACTIVE)).order_by(Run.created_at))
        with self.db.read() as session:
            return list(session.execute(query).all())

    def renew_token(self, run_id: str) -> str:
        """A new ingestion token for a run that has not started (the old one was only known to
        an earlier dashboard process); returns it, stores its hash."""
        token = secrets.token_urlsafe(32)
        with self._write() as (session, logged):
            session.execute(update(Run).where(Run.id == run_id)
                            .values(token_hash=hash_token(token)))
        return token

    @staticmethod
    def _state(session: Session, run_id: str) -> tuple[str, float | None]:
        row = session.connection().execute(_STATE, {"k_id": run_id}).first()
        if row is None:
            raise NotFound(f"run {run_id} not found")
        return row.status, row.started_at

    @staticmethod
    def _upsert(session: Session, table: type, run_id: str, key: dict, values: dict) -> None:
        """Insert the row, or update the one with this key: the dialect's ``INSERT .. ON
        CONFLICT DO UPDATE`` (SQLite, PostgreSQL), else UPDATE and INSERT if nothing matched."""
        connection = session.connection()
        params = {"k_run_id": run_id, **_params("k_", key), **_params("v_", values)}
        dialect = connection.dialect.name
        if dialect in NATIVE_UPSERT:
            connection.execute(_native_upsert(dialect, table.__table__, tuple(key),
                                              tuple(values)), params)
            return
        update_row, insert_row = _upsert_statements(table.__table__, tuple(key), tuple(values))
        if connection.execute(update_row, params).rowcount == 0:
            connection.execute(insert_row, params)

    @staticmethod
    def _log(session: Session, logged: list[FeedEvent], event: Event, run_values: dict,
             status: str, payload: str | None = None) -> int:
        """Append ``event`` (``payload``: its JSON, if already made) to the log and to
        ``logged``; the run row gets its id and ``run_values``; ``status`` is the run's status
        afterwards."""
        run_id = event.run_id
        kind = "client" if event.client else "round" if event.round else "state"
        payload = payload or event.model_dump_json()
        connection = session.connection()
        result = connection.execute(_LOG, {"v_run_id": run_id, "v_kind": kind,
                                           "v_payload": payload, "v_digest": digest(payload)})
        event_id = result.inserted_primary_key[0]
        logged.append(FeedEvent(run_id, event_id, kind, payload, status))
        values = {"last_event_id": event_id, **run_values}
        connection.execute(_run_update(tuple(values)), {"k_id": run_id, **_params("v_", values)})
        return event_id


# Statements of the hot path, built once with named parameters (k_: keys, v_: values): building
# an ORM statement per event costs more than executing it.
_RUNS = Run.__table__
_STATE = select(_RUNS.c.status, _RUNS.c.started_at).where(_RUNS.c.id == bindparam("k_id"))
_EVENTS = EventRow.__table__
_LOG = insert(_EVENTS).values(
    {c: bindparam(f"v_{c}") for c in ("run_id", "kind", "payload", "digest")})
_KNOWN = select(_EVENTS.c.id).where(_EVENTS.c.run_id == bindparam("k_run_id"),
                                    _EVENTS.c.digest == bindparam("k_digest"))


def digest(payload: str) -> str:
    """An event's identity: SHA-256 of its JSON (a re-sent event has the same bytes)."""
    return hashlib.sha256(payload.encode()).hexdigest()


def _params(prefix: str, values: dict) -> dict:
    return {f"{prefix}{name}": value for name, value in values.items()}


@cache
def _run_update(columns: tuple[str, ...]):
    return update(_RUNS).where(_RUNS.c.id == bindparam("k_id")).values(
        {c: bindparam(f"v_{c}") for c in columns})


NATIVE_UPSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


@cache
def _native_upsert(dialect: str, table: Table, key: tuple[str, ...], columns: tuple[str, ...]):
    """INSERT .. ON CONFLICT (run_id, *key) DO UPDATE SET every column to the new value."""
    row = NATIVE_UPSERT[dialect](table).values(
        {"run_id": bindparam("k_run_id"), **{c: bindparam(f"v_{c}") for c in columns}})
    return row.on_conflict_do_update(index_elements=["run_id", *key],
                                     set_={c: row.excluded[c] for c in columns})


@cache
def _upsert_statements(table: Table, key: tuple[str, ...], columns: tuple[str, ...]):
    where = [table.c.run_id == bindparam("k_run_id"),
             *(table.c[k] == bindparam(f"k_{k}") for k in key)]
    values = {c: bindparam(f"v_{c}") for c in columns}
    return (update(table).where(*where).values(values),
            insert(table).values({"run_id": bindparam("k_run_id"), **values}))


def transition(now: str, started_at: float | None, status: RunStatus, message: str
               ) -> dict | None:
    """Column updates that move a run from ``now`` to ``status``; None once it has ended."""
    if now not in ACTIVE:
        return None
    at = time.time()
    values: dict = {"status": status}
    if status == "running" and started_at is None:
        values["started_at"] = at
    if status not in ACTIVE:
        values["finished_at"] = at
    if message:
        values["message"] = message[-4000:]
    return values
