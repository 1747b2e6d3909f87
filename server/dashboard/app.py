"""The dashboard application: ``create_app(settings)`` wires services, routers and pages."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from common.config import ExperimentConfig
from common.validate import warm_up
from server.dashboard import pages
from server.dashboard.api import experiments, export, meta, runs, stream
from server.dashboard.broker import Broker
from server.dashboard.cache import ResponseCache
from server.dashboard.db import Database
from server.dashboard.deps import Services
from server.dashboard.runner import Runner, stop_orphan
from server.dashboard.security import RequestGuard
from server.dashboard.settings import Settings, is_loopback
from server.dashboard.store import Conflict, NotFound, RunLog
from server.dashboard.validation import json_safe

log = logging.getLogger(__name__)
RESTARTED = "the dashboard restarted while the run was in flight"


def launch(services: Services, config: ExperimentConfig) -> str:
    """Create and queue an experiment; returns the run id."""
    experiment_id = services.runlog.create_experiment(config)
    run_id, token = services.runlog.create_run(experiment_id, "simulation", external=False)
    services.runner.submit(run_id, token)
    log.info("launched %s as run %s", config.name, run_id)
    return run_id


def recover(services: Services) -> None:
    """Runs left active by an earlier process become interrupted; their processes are stopped."""
    for run_id, pid in services.runlog.interrupt_active(RESTARTED):
        if pid is not None:
            threading.Thread(target=stop_orphan, daemon=True,
                             args=(run_id, pid, services.settings.cancel_timeout_s)).start()


async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": json_safe(jsonable_encoder(error.errors()))}, status_code=422)


async def _not_found(_: Request, error: NotFound) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=404)


async def _conflict(_: Request, error: Conflict) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=409)


def create_app(settings: Settings, launches: Sequence[ExperimentConfig] = (),
               extra_hosts: frozenset[str] = frozenset()) -> FastAPI:
    """The ASGI app; ``launches`` are created and launched once it has started."""
    db = Database(settings.database_url)
    broker = Broker()
    runlog = RunLog(db, broker)
    services = Services(settings, db, broker, runlog, Runner(settings, runlog),
                        ResponseCache(max_stale_s=settings.cache_max_stale_s))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        broker.bind(asyncio.get_running_loop())
        threading.Thread(target=warm_up, daemon=True, name="warm-validation").start()
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
        description="Configure, launch, watch and compare federated fine-tuning experiments "
        "on memory-capped edge devices.",
    )
    app.state.services = services
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    for module in (experiments, runs, stream, export, meta, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    app.add_middleware(RequestGuard, loopback_only=is_loopback(settings.host),
                       extra_hosts=extra_hosts)
    return app
