"""HTML pages: one shell per page whose script reads the API (nothing else rendered server-side).

Every page is ``templates/page.html`` with its title (also the placeholder heading) and its
module script ``/static/{script}.js`` filled in.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from string import Template

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from server.dashboard.deps import RunId

STATIC = Path(__file__).with_name("static")
SHELL = Template((Path(__file__).with_name("templates") / "page.html").read_text("utf-8"))
router = APIRouter(include_in_schema=False)


def _page(title: str, script: str) -> HTMLResponse:
    """The shell with ``title`` and ``/static/{script}.js`` filled in."""
    return HTMLResponse(SHELL.substitute(title=escape(title), script=escape(script)))


@router.get("/")
async def experiments_page() -> HTMLResponse:
    return _page("Experiments", "index")


@router.get("/experiments/new")
async def new_experiment_page() -> HTMLResponse:
    return _page("New experiment", "new")


@router.get("/runs/{run_id}")
async def run_page(run_id: RunId) -> HTMLResponse:
    return _page("Run", "run")


@router.get("/compare")
async def compare_page() -> HTMLResponse:
    return _page("Compare runs", "compare")
