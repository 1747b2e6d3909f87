"""Baseline: the schema of edgefed up to commit ace9c78 (made by ``create_all`` then).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _run_id() -> sa.Column:
    return sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                     nullable=False)


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("config_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("experiment_id", sa.Integer,
                  sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False),
        sa.Column("engine", sa.String(20), nullable=False),
        sa.Column("external", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("started_at", sa.Double),
        sa.Column("finished_at", sa.Double),
        sa.Column("exit_code", sa.Integer),
        sa.Column("pid", sa.Integer),
        sa.Column("last_event_id", sa.Integer, nullable=False),
    )
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _run_id(),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )
    op.create_index("ix_events_run_id_id", "events", ["run_id", "id"])
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer, primary_key=True),
        _run_id(),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("accuracy", sa.Double, nullable=False),
        sa.Column("loss", sa.Double, nullable=False),
        sa.Column("num_ok", sa.Integer, nullable=False),
        sa.Column("num_failed", sa.Integer, nullable=False),
        sa.UniqueConstraint("run_id", "round"),
    )
    op.create_table(
        "clients",
        sa.Column("id", sa.Integer, primary_key=True),
        _run_id(),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("phase", sa.String(10), nullable=False),
        sa.Column("node_id", sa.String(20), nullable=False),
        sa.Column("partition_id", sa.Integer, nullable=False),
        sa.Column("device", sa.String(100), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("num_examples", sa.Integer, nullable=False),
        sa.Column("train_loss", sa.Double),
        sa.Column("accuracy", sa.Double),
        sa.Column("activation_bytes", sa.Integer),
        sa.Column("compressed_bytes", sa.Integer),
        sa.Column("peak_bytes", sa.Integer),
        sa.Column("total_bytes", sa.Integer),
        sa.Column("budget_bytes", sa.Integer),
        sa.Column("method", sa.String(20)),
        sa.Column("last_k", sa.Integer),
        sa.Column("eps", sa.Double),
        sa.Column("ranks", sa.JSON),
        sa.Column("batch_size", sa.Integer),
        sa.Column("wall_s", sa.Double),
        sa.Column("sim_time_s", sa.Double),
        sa.UniqueConstraint("run_id", "round", "phase", "partition_id"),
    )


def downgrade() -> None:
    for table in ("clients", "rounds", "events", "runs", "experiments"):
        op.drop_table(table)
