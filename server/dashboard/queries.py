"""Read side: ORM rows to API models, run detail, comparison summaries."""

from __future__ import annotations

from statistics import fmean
from typing import get_args

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from common.config import ExperimentConfig
from common.events import RoundResult
from common.record import ClientRecord
from server.dashboard.models import ClientRow, Experiment, RoundRow, Run
from server.dashboard.schemas import ExperimentOut, MemoryMetric, RunOut, RunSummary
from server.dashboard.store import NotFound


def config_of(experiment: Experiment) -> ExperimentConfig:
    return ExperimentConfig.model_validate_json(experiment.config_json)


def experiment_out(experiment: Experiment) -> ExperimentOut:
    return ExperimentOut(
        id=experiment.id, name=experiment.name, created_at=experiment.created_at,
        config=config_of(experiment),
        runs=[RunOut.model_validate(run) for run in experiment.runs],
    )


def get_experiment(session: Session, experiment_id: int) -> Experiment:
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise NotFound(f"experiment {experiment_id} not found")
    return experiment


def get_run(session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id, options=[selectinload(Run.experiment)])
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


def list_runs(session: Session, limit: int, offset: int, status: str | None = None) -> list[Run]:
    query = select(Run).options(selectinload(Run.experiment)).order_by(Run.created_at.desc())
    if status is not None:
        query = query.where(Run.status == status)
    return list(session.scalars(query.limit(limit).offset(offset)))


CLIENT_FIELDS = tuple(ClientRecord.model_fields)
ROUND_FIELDS = tuple(RoundResult.model_fields)


def round_rows(session: Session, run_id: str | None = None, *, with_run_id: bool = False
               ) -> list[dict]:
    """Rounds as plain dicts (``RoundResult`` fields), by run then round; validated on the way
    in, so read without building models (this is what the run page's readers wait for)."""
    table = RoundRow.__table__
    query = select(table.c.run_id, *(table.c[f] for f in ROUND_FIELDS))
    if run_id is not None:
        query = query.where(table.c.run_id == run_id)
    rows = session.execute(query.order_by(table.c.run_id, table.c.round)).mappings()
    return [dict(row) if with_run_id else {f: row[f] for f in ROUND_FIELDS} for row in rows]


def client_rows(session: Session, run_id: str | None = None, round: int | None = None,
                phase: str | None = None, *, with_run_id: bool = False) -> list[dict]:
    """Per-client records as plain dicts (``ClientRecord`` fields), by run, round, client."""
    table = ClientRow.__table__
    query = select(table.c.run_id, *(table.c[f] for f in CLIENT_FIELDS))
    for column, value in (("run_id", run_id), ("round", round), ("phase", phase)):
        if value is not None:
            query = query.where(table.c[column] == value)
    query = query.order_by(table.c.run_id, table.c.round, table.c.phase, table.c.partition_id)
    fields = ("run_id", *CLIENT_FIELDS) if with_run_id else CLIENT_FIELDS
    return [{**{f: row[f] for f in fields}, "node_id": int(row["node_id"])}
            for row in session.execute(query).mappings()]


def run_detail(session: Session, run_id: str) -> dict:
    """A run as ``RunDetail`` (run, config, rounds, clients), in plain JSON-ready values."""
    run = get_run(session, run_id)
    return {"run": RunOut.model_validate(run), "config": config_of(run.experiment),
            "rounds": round_rows(session, run_id), "clients": client_rows(session, run_id)}


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def summarize(session: Session, run: Run, memory: MemoryMetric) -> RunSummary:
    config = config_of(run.experiment)
    rounds = round_rows(session, run.id)
    clients = client_rows(session, run.id, phase="train")
    ok = [c for c in clients if c["status"] == "ok"]
    counts = {status: sum(c["status"] == status for c in clients)
              for status in ("ok", "oom", "dropped", "error")}
    means = {f"{m}_bytes_mean": _mean([c[f"{m}_bytes"] for c in ok])
             for m in get_args(MemoryMetric)}
    peaks = [c["peak_step_bytes"] for c in ok if c["peak_step_bytes"] is not None]
    return RunSummary(
        run_id=run.id, experiment_id=run.experiment_id, experiment_name=run.experiment.name,
        status=run.status, method=config.compression.method, policy=config.policy,
        rounds_done=max((r["round"] for r in rounds), default=0),
        initial_accuracy=next((r["accuracy"] for r in rounds if r["round"] == 0), None),
        final_accuracy=rounds[-1]["accuracy"] if rounds else None,
        best_accuracy=max((r["accuracy"] for r in rounds), default=None),
        peak_step_bytes_max=max(peaks, default=None), **means,
        num_ok=counts["ok"], num_oom=counts["oom"], num_dropped=counts["dropped"],
        num_error=counts["error"], memory_bytes=means[f"{memory}_bytes_mean"], pareto=False,
    )


def mark_pareto(summaries: list[RunSummary], finished_only: bool = True) -> list[RunSummary]:
    """A run is on the front when no other run has memory <= and accuracy >= with one strict.
    With ``finished_only`` only finished runs compete (an interrupted or failed run's numbers
    are those of an unfinished experiment): the others are never on the front."""
    points = [(s.memory_bytes, s.final_accuracy) if s.status == "finished" or not finished_only
              else (None, None) for s in summaries]

    def dominated(m: float, a: float) -> bool:
        return any(
            om is not None and oa is not None and om <= m and oa >= a and (om < m or oa > a)
            for om, oa in points
        )

    return [
        s.model_copy(update={"pareto": m is not None and a is not None and not dominated(m, a)})
        for s, (m, a) in zip(summaries, points, strict=True)
    ]


def compare(session: Session, run_ids: list[str], memory: MemoryMetric,
            finished_only: bool = True) -> list[RunSummary]:
    if run_ids:
        runs = [get_run(session, run_id) for run_id in dict.fromkeys(run_ids)]
    else:
        runs = list_runs(session, limit=200, offset=0)
    return mark_pareto([summarize(session, run, memory) for run in runs], finished_only)
