"""Server facts, the method registry and the device catalogue (for the experiment form and
the comparison chart), run comparison."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Query, Request, Response
from pydantic import StringConstraints

from common.compression.registry import REGISTRY
from common.config import Engine, ExperimentConfig
from common.devices import load_catalogue
from server.dashboard.cache import cached_json
from server.dashboard.deps import PROBLEMS, ServicesDep
from server.dashboard.queries import compare
from server.dashboard.schemas import (
    RUN_ID_PATTERN,
    Catalogue,
    Comparison,
    Info,
    MemoryMetric,
    MethodInfo,
    MethodParam,
)

router = APIRouter(prefix="/api", tags=["meta"], responses=PROBLEMS)
RunIdText = Annotated[str, StringConstraints(pattern=RUN_ID_PATTERN)]


def _version() -> str:
    try:
        return version("edgefed")
    except PackageNotFoundError:
        return "unknown"


@router.get("/info")
def info(services: ServicesDep) -> Info:
    return Info(version=_version(), auth_required=services.settings.token is not None,
                max_concurrent_runs=services.settings.max_concurrent_runs,
                engines=list(get_args(Engine)))


@router.get("/schema/experiment")
def experiment_schema() -> dict[str, Any]:
    """JSON schema of the experiment config (the form is generated from it)."""
    return ExperimentConfig.model_json_schema()


@router.get("/methods")
def methods() -> list[MethodInfo]:
    """The compression methods, in registry order, with their parameters."""
    return [MethodInfo(name=spec.name, summary=spec.summary, cheaper=list(spec.cheaper),
                       params=[MethodParam(name=p.name, rule=p.rule) for p in spec.params])
            for spec in REGISTRY.values()]


@router.get("/devices")
def devices() -> Catalogue:
    catalogue = load_catalogue()
    return Catalogue(profiles=list(catalogue.profiles.values()), fleets=catalogue.fleets)


@router.get("/compare", response_model=Comparison)
async def compare_runs(
    request: Request, services: ServicesDep,
    run: Annotated[list[RunIdText] | None,
                   Query(max_length=50, description="run ids; none: the latest 200 runs")] = None,
    memory: MemoryMetric = "activation",
    finished_only: Annotated[bool, Query(
        description="only finished runs can be on the front (default)")] = True,
) -> Response:
    """Runs side by side; ``pareto`` marks the memory-vs-final-accuracy front."""

    def build() -> Comparison:
        with services.db.read() as session:
            return Comparison(memory=memory,
                              runs=compare(session, run or [], memory, finished_only))

    return await cached_json(request, build)
