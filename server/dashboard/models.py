"""ORM tables: experiments, their runs, and what runs report (the event log and its projections).

``events`` is the append-only log the live stream replays (its ``id`` is the SSE event id); an
event's ``digest`` (SHA-256 of its JSON) is unique per run, so one re-sent or re-imported is
stored once;
``rounds`` and ``clients`` are the same records as queryable rows, one per (run, round) and per
(run, round, phase, partition), so a re-sent event replaces its row instead of doubling it.
``clients`` has one column per field of ``common.record.ClientRecord`` (derived, not declared);
a change of that schema needs an Alembic revision (``server/dashboard/migrations``).
"""

from __future__ import annotations

from types import UnionType
from typing import Literal, Union, get_args, get_origin

from annotated_types import MaxLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeEngine

from common.record import ClientRecord

ACTIVE = ("queued", "running")


class Base(DeclarativeBase):
    pass


class Experiment(Base):
    __tablename__ = "experiments"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused after a delete

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    config_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float]
    runs: Mapped[list[Run]] = relationship(
        back_populates="experiment", cascade="all, delete-orphan", order_by="Run.created_at"
    )


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    engine: Mapped[str] = mapped_column(String(20))
    external: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(String(20), index=True)
    message: Mapped[str] = mapped_column(Text, default="")
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float]
    started_at: Mapped[float | None]
    finished_at: Mapped[float | None]
    exit_code: Mapped[int | None]
    pid: Mapped[int | None]
    last_event_id: Mapped[int] = mapped_column(default=0)
    experiment: Mapped[Experiment] = relationship(back_populates="runs")

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def experiment_name(self) -> str:
        return self.experiment.name


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_run_id_id", "run_id", "id"),
                      UniqueConstraint("run_id", "digest", name="uq_events_run_id_digest"))

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(10))
    payload: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64))


class RoundRow(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("run_id", "round"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    round: Mapped[int]
    accuracy: Mapped[float]
    loss: Mapped[float]
    num_ok: Mapped[int]
    num_failed: Mapped[int]


def _nullable(annotation: object) -> bool:
    return get_origin(annotation) in (Union, UnionType) and type(None) in get_args(annotation)


def _sql_type(name: str, field: FieldInfo) -> TypeEngine:
    """The column type of a record field: ints are 64-bit, strings bounded by their
    ``max_length`` (a Literal by its longest value), lists JSON."""
    kinds = [t for t in get_args(field.annotation) if t is not type(None)] if _nullable(
        field.annotation) else [field.annotation]
    kind = kinds[0]
    if len(kinds) == 1 and get_origin(kind) is Literal:
        return String(max(len(v) for v in get_args(kind)))
    if len(kinds) == 1 and get_origin(kind) in (list, dict):
        return JSON()
    if kinds == [str]:
        lengths = [m.max_length for m in field.metadata if isinstance(m, MaxLen)]
        return String(lengths[0]) if lengths else Text()
    scalar = {int: BigInteger, float: Double, bool: Boolean}
    if len(kinds) == 1 and kind in scalar:
        return scalar[kind]()
    raise TypeError(f"{name}: no column type for {field.annotation} (give one in types)")


def record_columns(record: type[BaseModel], types: dict[str, TypeEngine]) -> list[Column]:
    """One column per field of ``record``, in field order: its type derived from the
    annotation (or given in ``types``), nullable where the field admits None."""
    return [Column(name, types[name] if name in types else _sql_type(name, field),
                   nullable=_nullable(field.annotation))
            for name, field in record.model_fields.items()]


class ClientRow(Base):
    """The ``ClientRecord`` of each (run, round, phase, partition): one column per field."""

    __table__ = Table(
        "clients", Base.metadata,
        Column("id", Integer, primary_key=True),
        Column("run_id", ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        # Flower node ids are uint64, beyond a signed BIGINT: stored as text
        *record_columns(ClientRecord, {"node_id": String(20)}),
        UniqueConstraint("run_id", "round", "phase", "partition_id"),
    )
