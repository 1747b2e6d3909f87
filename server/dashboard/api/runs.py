"""Runs: list, detail, rounds, per-client rows, cancel, and event ingestion from the ServerApp."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError

from common.events import Event, RoundResult, RunStatus
from common.record import ClientRecord
from server.dashboard.cache import cached_json
from server.dashboard.deps import (
    PROBLEMS,
    Admin,
    RunId,
    ServicesDep,
    require_run_token,
)
from server.dashboard.queries import client_rows, get_run, list_runs, round_rows, run_detail
from server.dashboard.schemas import Accepted, RunDetail, RunOut
from server.dashboard.store import Conflict
from server.dashboard.validation import event_errors

router = APIRouter(prefix="/api/runs", tags=["runs"], responses=PROBLEMS)
Round = Annotated[int | None, Query(ge=0, le=2**31)]


@router.get("", response_model=list[RunOut])
async def read_runs(
    request: Request, services: ServicesDep, status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> Response:
    def build() -> list[RunOut]:
        with services.db.read() as session:
            return [RunOut.model_validate(r) for r in list_runs(session, limit, offset, status)]

    return await cached_json(request, build)


@router.get("/{run_id}", response_model=RunDetail, responses={304: {"description": "unchanged"}})
async def read_run(run_id: RunId, request: Request, services: ServicesDep) -> Response:
    """Status, config, per-round global metrics and every per-client row (ETag: data version)."""

    def build() -> dict:
        with services.db.read() as session:
            return run_detail(session, run_id)

    return await cached_json(request, build)


@router.get("/{run_id}/rounds", response_model=list[RoundResult])
async def read_rounds(run_id: RunId, request: Request, services: ServicesDep) -> Response:
    def build() -> list[dict]:
        with services.db.read() as session:
            get_run(session, run_id)
            return round_rows(session, run_id)

    return await cached_json(request, build)


@router.get("/{run_id}/clients", response_model=list[ClientRecord])
async def read_clients(
    run_id: RunId, request: Request, services: ServicesDep, round: Round = None,
    phase: Literal["train", "evaluate"] | None = None,
) -> Response:
    def build() -> list[dict]:
        with services.db.read() as session:
            get_run(session, run_id)
            return client_rows(session, run_id, round, phase)

    return await cached_json(request, build)


@router.post("/{run_id}/cancel", status_code=202, dependencies=Admin)
def cancel_run(run_id: RunId, services: ServicesDep) -> RunOut:
    """Stop a run: SIGTERM to its process group, SIGKILL after the timeout; 409 if it ended."""
    with services.db.read() as session:
        if not get_run(session, run_id).active:
            raise Conflict(f"run {run_id} has already ended")
    if not services.runner.cancel(run_id):
        services.runlog.set_state(run_id, "cancelled", "cancelled by user")
    with services.db.read() as session:
        return RunOut.model_validate(get_run(session, run_id))


@router.post("/{run_id}/events", status_code=201, dependencies=[Depends(require_run_token)])
def ingest_event(run_id: RunId, event: Event, services: ServicesDep) -> Accepted:
    """One event from the run's ServerApp; committed before this replies. Idempotent: an event
    sent again (same JSON) is stored once and answered with the id it was stored under."""
    errors = event_errors(event, run_id)
    if errors:
        raise RequestValidationError(errors)
    return Accepted(event_id=services.runlog.ingest(run_id, event))

