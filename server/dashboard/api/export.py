"""CSV/JSON downloads of one run or of every run (rows carry their run id)."""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from pydantic_core import to_json
from sqlalchemy import select

from server.dashboard.deps import PROBLEMS, RunId, SessionDep
from server.dashboard.models import Run
from server.dashboard.queries import (
    CLIENT_FIELDS,
    ROUND_FIELDS,
    client_rows,
    get_run,
    round_rows,
    run_detail,
)

router = APIRouter(prefix="/api", tags=["export"], responses=PROBLEMS)
Format = Annotated[Literal["csv", "json"], Query()]
Table = Annotated[Literal["clients", "rounds"], Query(description="CSV only: which rows")]
DOWNLOADS = {
    200: {"content": {"text/csv": {}, "application/json": {}}, "description": "a download"}
}


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: a string that would start a formula
    (``=HYPERLINK(...)``, ``+cmd``, ``@SUM``...) gets a leading ``'`` (OWASP's advice); numbers
    stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _csv(rows: list[dict], fields: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["run_id", *fields])
    writer.writeheader()
    for row in rows:
        ranks = row.get("ranks")
        row = {**row, "ranks": json.dumps(ranks)} if ranks is not None else row
        writer.writerow({key: cell(value) for key, value in row.items()})
    return out.getvalue()


def _table(session, table: str, run_id: str | None) -> str:
    if table == "clients":
        return _csv(client_rows(session, run_id, with_run_id=True), CLIENT_FIELDS)
    return _csv(round_rows(session, run_id, with_run_id=True), ROUND_FIELDS)


def _download(body: str | bytes, name: str, media_type: str) -> Response:
    return Response(body, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/runs/{run_id}/export", response_class=Response, responses=DOWNLOADS)
def export_run(run_id: RunId, session: SessionDep, format: Format = "json",
               table: Table = "clients") -> Response:
    """One run: JSON (run, config, rounds, clients) or CSV of its client or round rows."""
    if format == "json":
        body = to_json(run_detail(session, run_id), indent=1)
        return _download(body, f"run-{run_id}.json", "application/json")
    get_run(session, run_id)
    return _download(_table(session, table, run_id), f"run-{run_id}-{table}.csv", "text/csv")


@router.get("/export", response_class=Response, responses=DOWNLOADS)
def export_all(session: SessionDep, format: Format = "json",
               table: Table = "clients") -> Response:
    """Every run: JSON list of run details, or CSV of all client or round rows."""
    if format == "json":
        run_ids = session.scalars(select(Run.id).order_by(Run.created_at))
        details = [run_detail(session, run_id) for run_id in run_ids]
        return _download(to_json(details, indent=1), "edgefed-runs.json", "application/json")
    return _download(_table(session, table, None), f"edgefed-{table}.csv", "text/csv")
