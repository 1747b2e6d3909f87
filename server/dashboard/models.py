"""ORM tables: experiments, their runs, and what runs report (the event log and its projections).

``events`` is the append-only log the live stream replays (its ``id`` is the SSE event id); an
event's ``digest`` (SHA-256 of its JSON) is unique per run, so one re-sent or re-imported is
stored once;
``rounds`` and ``clients`` are the same records as queryable rows, one per (run, round) and per
(run, round, phase, partition), so a re-sent event replaces its row instead of doubling it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

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
                      UniqueConstraint("run_id", "digest"))

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


class ClientRow(Base):
    __tablename__ = "clients"
    __table_args__ = (UniqueConstraint("run_id", "round", "phase", "partition_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    round: Mapped[int]
    phase: Mapped[str] = mapped_column(String(10))
    node_id: Mapped[str] = mapped_column(String(20))  # Flower node ids are uint64
    partition_id: Mapped[int]
    device: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str] = mapped_column(Text, default="")
    num_examples: Mapped[int] = mapped_column(default=0)
    train_loss: Mapped[float | None]
    accuracy: Mapped[float | None]
    activation_bytes: Mapped[int | None]
    compressed_bytes: Mapped[int | None]
    peak_bytes: Mapped[int | None]
    total_bytes: Mapped[int | None]
    budget_bytes: Mapped[int | None]
    method: Mapped[str | None] = mapped_column(String(20))
    last_k: Mapped[int | None]
    eps: Mapped[float | None]
    ranks: Mapped[Any | None] = mapped_column(JSON)
    batch_size: Mapped[int | None]
    wall_s: Mapped[float | None]
    sim_time_s: Mapped[float | None]
