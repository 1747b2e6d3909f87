"""Experiments: create (validated before anything is stored), list, get, delete, launch, attach."""

from __future__ import annotations

import shutil
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from common.config import ExperimentConfig
from server.dashboard.cache import cached_json
from server.dashboard.deps import (
    PROBLEMS,
    Admin,
    ExperimentId,
    Services,
    ServicesDep,
    SessionDep,
)
from server.dashboard.models import Experiment
from server.dashboard.queries import experiment_out, get_experiment, get_run
from server.dashboard.schemas import AttachedRun, ExperimentOut, LaunchRequest, Problem, RunOut
from server.dashboard.validation import checked_config

router = APIRouter(prefix="/api/experiments", tags=["experiments"], responses=PROBLEMS)
CheckedConfig = Annotated[ExperimentConfig, Depends(checked_config)]
CONFIG_BODY = {  # what checked_config reads and answers, for the OpenAPI document
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ExperimentConfig"}}}},
    "responses": {"422": {"description": "Every problem of the config, one error each", "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}},
}
Launch = Annotated[LaunchRequest | None, Body()]


@router.get("", response_model=list[ExperimentOut])
async def list_experiments(
    request: Request, services: ServicesDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> Response:
    def build() -> list[ExperimentOut]:
        query = (select(Experiment).options(selectinload(Experiment.runs))
                 .order_by(Experiment.id.desc()).limit(limit).offset(offset))
        with services.db.read() as session:
            return [experiment_out(e) for e in session.scalars(query)]

    return await cached_json(request, build)


@router.post("", status_code=201, dependencies=Admin, openapi_extra=CONFIG_BODY)
def create_experiment(config: CheckedConfig, services: ServicesDep) -> ExperimentOut:
    experiment_id = services.runlog.create_experiment(config)
    with services.db.read() as session:
        return experiment_out(get_experiment(session, experiment_id))


@router.post("/validate", openapi_extra=CONFIG_BODY)
def validate_experiment(config: CheckedConfig) -> ExperimentConfig:
    """Check a config without storing it: 200 with the config as it would run, or 422."""
    return config


@router.get("/{experiment_id}")
def read_experiment(experiment_id: ExperimentId, session: SessionDep) -> ExperimentOut:
    return experiment_out(get_experiment(session, experiment_id))


@router.delete("/{experiment_id}", status_code=204, dependencies=Admin)
def delete_experiment(experiment_id: ExperimentId, services: ServicesDep) -> Response:
    """Delete an experiment with all its runs' data and files; 409 while a run is active."""
    for run_id in services.runlog.delete_experiment(experiment_id):
        shutil.rmtree(services.settings.runs_dir / run_id, ignore_errors=True)
    return Response(status_code=204)


def _new_run(experiment_id: int, services: Services, request: LaunchRequest | None,
             external: bool) -> tuple[RunOut, str]:
    """A queued run on the requested engine (``LaunchRequest``'s default without a body).

    The runner is given a run it starts itself; an external one waits for its reporter.
    Returns the run as stored and its ingestion token.
    """
    engine = (request or LaunchRequest()).engine
    if external:
        run_id, token = services.runlog.create_run(experiment_id, engine, external=True)
    else:
        with services.runner.place() as submit:
            run_id, token = services.runlog.create_run(experiment_id, engine, external=False)
            submit(run_id, token)
    with services.db.read() as session:
        return RunOut.model_validate(get_run(session, run_id)), token


@router.post("/{experiment_id}/launch", status_code=202, dependencies=Admin,
             responses={429: {"model": Problem, "description": "the launch queue is full",
                              "headers": {"Retry-After": {"schema": {"type": "integer"},
                                                          "description": "seconds"}}}})
def launch_experiment(
    experiment_id: ExperimentId, services: ServicesDep, request: Launch = None
) -> RunOut:
    """Queue a run; the runner starts ``edgefed run`` when a slot is free."""
    return _new_run(experiment_id, services, request, external=False)[0]


@router.post("/{experiment_id}/attach", status_code=201, dependencies=Admin)
def attach_run(
    experiment_id: ExperimentId, services: ServicesDep, request: Launch = None
) -> AttachedRun:
    """A run that an outside process feeds (``edgefed run ... --report-url --report-token``)."""
    run, token = _new_run(experiment_id, services, request, external=True)
    report_url = f"{services.settings.base_url}/api/runs/{run.id}/events"
    return AttachedRun(run=run, report_url=report_url, report_token=token)
