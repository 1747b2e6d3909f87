"""Clients: one column per ``ClientRecord`` field, the memory account (issue 13).

``peak_bytes`` (the forward's peak) is renamed ``peak_forward_bytes``; the budget's quantity
(``training_bytes``), the rest of the breakdown, the whole step's peak and the cgroup's peak and
limit are added (None for old rows: never measured); integers become 64-bit, strings bounded as
the record bounds them.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ADDED = ("training_bytes", "grad_bytes", "optimizer_bytes", "param_bytes", "transient_bytes",
         "peak_step_bytes", "rss_peak_bytes", "memory_limit_bytes")
WIDENED = ("round", "partition_id", "num_examples", "activation_bytes", "compressed_bytes",
           "total_bytes", "budget_bytes", "last_k", "batch_size")
# (column, old type, new type)
BOUNDED = (("phase", sa.String(10), sa.String(8)), ("status", sa.String(10), sa.String(7)),
           ("reason", sa.Text(), sa.String(2000)))


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.alter_column("peak_bytes", new_column_name="peak_forward_bytes",
                           type_=sa.BigInteger, existing_type=sa.Integer, existing_nullable=True)
        for name in WIDENED:
            batch.alter_column(name, type_=sa.BigInteger, existing_type=sa.Integer)
        for name, old, new in BOUNDED:
            batch.alter_column(name, type_=new, existing_type=old, existing_nullable=False)
        for name in ADDED:
            batch.add_column(sa.Column(name, sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        for name in ADDED:
            batch.drop_column(name)
        for name, old, new in BOUNDED:
            batch.alter_column(name, type_=old, existing_type=new, existing_nullable=False)
        for name in WIDENED:
            batch.alter_column(name, type_=sa.Integer, existing_type=sa.BigInteger)
        batch.alter_column("peak_forward_bytes", new_column_name="peak_bytes",
                           type_=sa.Integer, existing_type=sa.BigInteger, existing_nullable=True)
