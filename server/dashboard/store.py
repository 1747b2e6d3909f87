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

from sqlalchemy import select

from common.config import Engine, ExperimentConfig
from common.events import ClientResult, Event, RoundResult, RunState, RunStatus
from server.dashboard.broker import Broker
from server.dashboard.db import Database
from server.dashboard.models import ACTIVE, ClientRow, EventRow, Experiment, RoundRow, Run


class NotFound(LookupError):
    """404: ``what`` does not exist."""


class Conflict(RuntimeError):
    """409: the request is valid but the resource's state forbids it."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def client_key(result: ClientResult) -> dict:
    return {"round": result.round, "phase": result.phase, "partition_id": result.partition_id}


def client_row_values(result: ClientResult) -> dict:
    return {**result.model_dump(), "node_id": str(result.node_id)}


def row_to_client(row: ClientRow) -> ClientResult:
    values = {name: getattr(row, name) for name in ClientResult.model_fields}
    return ClientResult.model_validate({**values, "node_id": int(row.node_id)})


def row_to_round(row: RoundRow) -> RoundResult:
    return RoundResult.model_validate(row, from_attributes=True)


class RunLog:
    """Writes go through :class:`Database.write`; :class:`Broker` is told after each commit."""

    def __init__(self, db: Database, broker: Broker) -> None:
        self.db = db
        self.broker = broker

    def create_experiment(self, config: ExperimentConfig) -> int:
        with self.db.write() as session:
            experiment = Experiment(
                name=config.name, config_json=config.model_dump_json(), created_at=time.time()
            )
            session.add(experiment)
            session.flush()
            return experiment.id

    def delete_experiment(self, experiment_id: int) -> None:
        with self.db.write() as session:
            experiment = session.get(Experiment, experiment_id)
            if experiment is None:
                raise NotFound(f"experiment {experiment_id} not found")
            active = [run.id for run in experiment.runs if run.active]
            if active:
                raise Conflict(f"experiment {experiment_id} has active runs: {', '.join(active)}")
            session.delete(experiment)

    def create_run(self, experiment_id: int, engine: Engine, external: bool) -> tuple[str, str]:
        """A queued run and its ingestion token (only the token's hash is stored)."""
        token = secrets.token_urlsafe(32)
        with self.db.write() as session:
            if session.get(Experiment, experiment_id) is None:
                raise NotFound(f"experiment {experiment_id} not found")
            run = Run(
                id=uuid.uuid4().hex, experiment_id=experiment_id, engine=engine,
                external=external, status="queued", message="", token_hash=hash_token(token),
                created_at=time.time(),
            )
            session.add(run)
            session.flush()
            self._log(session, run, Event(run_id=run.id, state=RunState(status="queued")))
        self.broker.publish()
        return run.id, token

    def ingest(self, run_id: str, event: Event) -> int:
        """Store one reported event; returns its log id once it is committed."""
        with self.db.write() as session:
            run = self._get(session, run_id)
            if event.client is not None:
                self._upsert(session, ClientRow, run_id, client_key(event.client),
                             client_row_values(event.client))
            elif event.round is not None:
                self._upsert(session, RoundRow, run_id, {"round": event.round.round},
                             event.round.model_dump())
            if event.state is not None:
                self._transition(run, event.state.status, event.state.message)
            elif run.status == "queued":
                self._transition(run, "running", "")
            event_id = self._log(session, run, event)
        self.broker.publish()
        return event_id

    def set_state(self, run_id: str, status: RunStatus, message: str = "", *,
                  pid: int | None = None, exit_code: int | None = None) -> bool:
        """A state change decided here (runner, restart); False if the run had already ended
        (``pid`` and ``exit_code`` are recorded either way)."""
        with self.db.write() as session:
            run = self._get(session, run_id)
            if pid is not None:
                run.pid = pid
            if exit_code is not None:
                run.exit_code = exit_code
            if not self._transition(run, status, message):
                return False
            state = RunState(status=status, message=message[-4000:])
            self._log(session, run, Event(run_id=run_id, state=state))
        self.broker.publish()
        return True

    def interrupt_active(self, message: str) -> list[tuple[str, int | None]]:
        """Mark every active run as interrupted; returns their (id, pid)."""
        with self.db.write() as session:
            lost = session.scalars(select(Run).where(Run.status.in_(ACTIVE))).all()
            for run in lost:
                self._transition(run, "interrupted", message)
                self._log(session, run, Event(
                    run_id=run.id, state=RunState(status="interrupted", message=message)))
        self.broker.publish()
        return [(run.id, run.pid) for run in lost]

    @staticmethod
    def _get(session, run_id: str) -> Run:
        run = session.get(Run, run_id)
        if run is None:
            raise NotFound(f"run {run_id} not found")
        return run

    @staticmethod
    def _transition(run: Run, status: RunStatus, message: str) -> bool:
        if not run.active:
            return False
        now = time.time()
        if status == "running" and run.started_at is None:
            run.started_at = now
        if status not in ACTIVE:
            run.finished_at = now
        run.status = status
        if message:
            run.message = message[-4000:]
        return True

    @staticmethod
    def _upsert(session, table: type, run_id: str, key: dict, values: dict) -> None:
        row = session.scalars(select(table).filter_by(run_id=run_id, **key)).one_or_none()
        if row is None:
            session.add(table(run_id=run_id, **values))
        else:
            for name, value in values.items():
                setattr(row, name, value)

    @staticmethod
    def _log(session, run: Run, event: Event) -> int:
        kind = "client" if event.client else "round" if event.round else "state"
        row = EventRow(run_id=run.id, kind=kind, payload=event.model_dump_json())
        session.add(row)
        session.flush()
        run.last_event_id = row.id
        return row.id
