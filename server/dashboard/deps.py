"""Dependencies: the app's services, a read session, and the two kinds of bearer token."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from server.dashboard.broker import Broker
from server.dashboard.cache import ResponseCache
from server.dashboard.db import Database
from server.dashboard.models import Run
from server.dashboard.runner import Runner
from server.dashboard.schemas import RUN_ID_PATTERN, Problem
from server.dashboard.settings import Settings
from server.dashboard.store import RunLog, hash_token


@dataclass
class Services:
    settings: Settings
    db: Database
    broker: Broker
    runlog: RunLog
    runner: Runner
    cache: ResponseCache
    token_hashes: dict[str, str] = field(default_factory=dict)


async def services(request: Request) -> Services:
    """(async: answered on the event loop, no worker thread)"""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services)]


def session(services: ServicesDep) -> Iterator[Session]:
    with services.db.read() as s:
        yield s


SessionDep = Annotated[Session, Depends(session)]
RunId = Annotated[str, Path(pattern=RUN_ID_PATTERN, description="run id")]
ExperimentId = Annotated[int, Path(ge=1, le=2**62, description="experiment id")]

admin_bearer = HTTPBearer(
    auto_error=False, scheme_name="AdminToken",
    description="the dashboard's --token; needed by mutating endpoints when configured",
)
run_bearer = HTTPBearer(
    auto_error=False, scheme_name="RunToken",
    description="the per-run token the run was launched with (--report-token)",
)
Credentials = HTTPAuthorizationCredentials | None


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def require_admin(
    services: ServicesDep, credentials: Annotated[Credentials, Depends(admin_bearer)]
) -> None:
    """Mutating endpoints: the configured token, compared in constant time."""
    if not services.settings.token_matches(credentials.credentials if credentials else None):
        raise _unauthorized("a valid bearer token is required")


async def require_run_token(
    run_id: RunId, services: ServicesDep,
    credentials: Annotated[Credentials, Depends(run_bearer)],
) -> None:
    """Ingestion: the token this run was launched with (its SHA-256 is compared)."""
    expected = services.token_hashes.get(run_id)
    if expected is None:
        expected = await run_in_threadpool(_token_hash, services, run_id)
    given = hash_token(credentials.credentials) if credentials else ""
    if not hmac.compare_digest(given, expected):
        raise _unauthorized("a valid run token is required")


def _token_hash(services: Services, run_id: str) -> str:
    """A run's token hash from the database, remembered (it never changes)."""
    with services.db.read() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise HTTPException(404, f"run {run_id} not found")
        services.token_hashes[run_id] = run.token_hash
        return run.token_hash


Admin = [Depends(require_admin)]
PROBLEMS = {code: {"model": Problem} for code in (401, 404, 409)}
