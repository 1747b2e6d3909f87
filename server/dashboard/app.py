"""The dashboard application: ``create_app(settings)`` wires services, routers and pages."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from common.config import ExperimentConfig
from common.validate import warm_up
from server.dashboard import pages
from server.dashboard.api import experiments, export, meta, runs, stream
from server.dashboard.broker import Broker
from server.dashboard.cache import ResponseCache
from server.dashboard.db import Database
from server.dashboard.deps import Services
from server.dashboard.models import Experiment
from server.dashboard.openapi import openapi_schema
from server.dashboard.runner import QueueFull, Runner
from server.dashboard.security import RequestGuard
from server.dashboard.settings import Settings, is_loopback
from server.dashboard.store import Conflict, NotFound, RunLog
from server.dashboard.validation import json_safe

log = logging.getLogger(__name__)
RESTARTED = "the dashboard restarted and the run's process was gone"


def settle() -> None:
    """Warm up validation (imports torch and the models), then freeze the heap built so far.

    Start-up objects (torch, pydantic models, routes: ~290,000) live as long as the server. A full
    collection costs time proportional to the objects it tracks, and it holds every request in
    flight: with them tracked, each one paused the server 150-220 ms under load (the benchmark's
    p99). ``gc.freeze()`` moves them to a generation the collector never scans. For a process
    that is the dashboard server (``serve``); an app built inside another program (tests) only
    warms up, so as not to freeze that program's objects for good.
    """
    try:
        warm_up()
    finally:
        gc.collect()
        gc.freeze()


def launch(services: Services, config: ExperimentConfig) -> str:
    """Queue a run of ``config``; returns the run id. The newest experiment with exactly this
    config is reused (a restart does not duplicate it); when one of its runs is still active
    (re-attached or re-queued at startup), that run is the answer and nothing new starts."""
    query = (select(Experiment).where(Experiment.config_json == config.model_dump_json())
             .order_by(Experiment.id.desc()).limit(1))
    with services.db.read() as session:
        experiment = session.scalars(query).first()
        active = [run.id for run in experiment.runs if run.active] if experiment else []
    if active:
        log.info("%s: run %s is still active; nothing new launched", config.name, active[-1])
        return active[-1]
    experiment_id = (experiment.id if experiment is not None
                     else services.runlog.create_experiment(config))
    run_id, token = services.runlog.create_run(experiment_id, "simulation", external=False)
    services.runner.submit(run_id, token)
    log.info("launched %s as run %s of experiment %d", config.name, run_id, experiment_id)
    return run_id


def recover(services: Services) -> None:
    """Runs an earlier dashboard process left active. Each one's ``events.jsonl`` is imported
    first (it may say how the run ended); then one still running is re-attached
    (:meth:`Runner.adopt`), one still queued is queued again with a new token, and one whose
    process is gone becomes ``interrupted``. Runs fed by an outside process are left as they
    are: that process re-sends what the dashboard missed and reports the end itself."""
    for run in services.runlog.active_runs():
        if run.external:
            continue
        services.runner.import_events(run.id)
        if run.status == "queued":
            services.runner.submit(run.id, services.runlog.renew_token(run.id))
        elif not services.runner.adopt(run.id, run.pid):
            services.runlog.set_state(run.id, "interrupted", RESTARTED)


async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": jsonable_encoder(json_safe(error.errors()))}, status_code=422)


async def _not_found(_: Request, error: NotFound) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=404)


async def _conflict(_: Request, error: Conflict) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=409)


async def _queue_full(_: Request, error: QueueFull) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=429,
                        headers={"Retry-After": str(error.retry_after_s)})


def create_app(settings: Settings, launches: Sequence[ExperimentConfig] = (),
               extra_hosts: frozenset[str] = frozenset(), own_process: bool = False) -> FastAPI:
    """The ASGI app; ``launches`` are created and launched once it has started.
    ``own_process``: the app is the whole process (``serve``), whose start-up heap it freezes
    after the warm-up (``settle``)."""
    db = Database(settings.database_url)
    broker = Broker()
    runlog = RunLog(db, broker)
    services = Services(settings, db, broker, runlog, Runner(settings, runlog),
                        ResponseCache(max_stale_s=settings.cache_max_stale_s))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        broker.bind(asyncio.get_running_loop())
        threading.Thread(target=settle if own_process else warm_up, daemon=True,
                         name="warm-up").start()
        await run_in_threadpool(recover, services)
        services.runner.start()
        for config in launches:
            await run_in_threadpool(launch, services, config)
        yield
        broker.close()
        await run_in_threadpool(services.runner.stop)
        db.close()

    app = FastAPI(  # no /docs, /redoc: FastAPI serves their scripts from a CDN
        title="edgefed dashboard", lifespan=lifespan, docs_url=None, redoc_url=None,
        generate_unique_id_function=lambda route: route.name,  # operation ids: function names
        description="Configure, launch, watch and compare federated fine-tuning experiments "
        "on memory-capped edge devices.",
    )
    app.state.services = services
    app.openapi = lambda: openapi_schema(app)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(QueueFull, _queue_full)
    for module in (experiments, runs, stream, export, meta, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    app.add_middleware(RequestGuard, loopback_only=is_loopback(settings.host),
                       extra_hosts=extra_hosts)
    return app
