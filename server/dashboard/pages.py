"""HTML pages: static shells whose scripts read the API (nothing rendered server-side)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from server.dashboard.deps import RunId

STATIC = Path(__file__).with_name("static")
router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / f"{name}.html", media_type="text/html")


@router.get("/")
async def experiments_page() -> FileResponse:
    return _page("index")


@router.get("/experiments/new")
async def new_experiment_page() -> FileResponse:
    return _page("new")


@router.get("/runs/{run_id}")
async def run_page(run_id: RunId) -> FileResponse:
    return _page("run")


@router.get("/compare")
async def compare_page() -> FileResponse:
    return _page("compare")
