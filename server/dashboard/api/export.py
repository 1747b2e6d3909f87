"""CSV/JSON downloads of one run or of every run (rows carry their run id)."""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from pydantic import TypeAdapter
from sqlalchemy import select

from common.events import ClientResult, RoundResult
from server.dashboard.deps import PROBLEMS, RunId, SessionDep
from server.dashboard.models import ClientRow, RoundRow, Run
from server.dashboard.queries import get_run, run_detail
from server.dashboard.schemas import RunDetail
from server.dashboard.store import row_to_client, row_to_round

router = APIRouter(prefix="/api", tags=["export"], responses=PROBLEMS)
Format = Annotated[Literal["csv", "json"], Query()]
Table = Annotated[Literal["clients", "rounds"], Query(description="CSV only: which rows")]
DOWNLOADS = {
    200: {"content": {"text/csv": {}, "application/json": {}}, "description": "a download"}
}
_details = TypeAdapter(list[RunDetail])


def _csv(table: str, rows: list[tuple[str, ClientRow | RoundRow]]) -> str:
    record, convert = ((ClientResult, row_to_client) if table == "clients"
                       else (RoundResult, row_to_round))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["run_id", *record.model_fields])
    writer.writeheader()
    for run_id, row in rows:
        values = convert(row).model_dump()
        if "ranks" in values:
            values["ranks"] = "" if values["ranks"] is None else json.dumps(values["ranks"])
        writer.writerow({"run_id": run_id, **values})
    return out.getvalue()


def _rows(session, table: str, run_id: str | None) -> list[tuple[str, ClientRow | RoundRow]]:
    orm = ClientRow if table == "clients" else RoundRow
    query = select(orm).order_by(orm.run_id, orm.round, orm.id)
    if run_id is not None:
        query = query.where(orm.run_id == run_id)
    return [(row.run_id, row) for row in session.scalars(query)]


def _download(body: str | bytes, name: str, media_type: str) -> Response:
    return Response(body, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/runs/{run_id}/export", response_class=Response, responses=DOWNLOADS)
def export_run(run_id: RunId, session: SessionDep, format: Format = "json",
               table: Table = "clients") -> Response:
    """One run: JSON (run, config, rounds, clients) or CSV of its client or round rows."""
    if format == "json":
        body = run_detail(session, run_id).model_dump_json(indent=1)
        return _download(body, f"run-{run_id}.json", "application/json")
    get_run(session, run_id)
    return _download(_csv(table, _rows(session, table, run_id)), f"run-{run_id}-{table}.csv",
                     "text/csv")


@router.get("/export", response_class=Response, responses=DOWNLOADS)
def export_all(session: SessionDep, format: Format = "json",
               table: Table = "clients") -> Response:
    """Every run: JSON list of run details, or CSV of all client or round rows."""
    if format == "json":
        run_ids = session.scalars(select(Run.id).order_by(Run.created_at))
        details = [run_detail(session, run_id) for run_id in run_ids]
        return _download(_details.dump_json(details, indent=1), "edgefed-runs.json",
                         "application/json")
    return _download(_csv(table, _rows(session, table, None)), f"edgefed-{table}.csv",
                     "text/csv")
