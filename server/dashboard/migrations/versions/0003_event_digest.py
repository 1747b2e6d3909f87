"""Events keyed by their content (issue 11).

``events.digest`` is the SHA-256 of the event's JSON (``payload``), unique per run: an event the
reporter re-sends, or that is imported again from the run's ``events.jsonl``, is stored once.
Rows stored before get the digest of their payload; of identical rows of one run (re-sent
before this revision) the first is kept.

Not here: SQLite's AUTOINCREMENT on ``experiments`` (ids never reused after a delete), which
databases created since have (``models.py``). Adding it means rebuilding the table, and SQLite
drops the old one with a cascade to ``runs`` while foreign keys are on, which they are inside
this transaction; revision 0005 does it, with foreign keys off (``env.py``).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UNIQUE = "uq_events_run_id_digest"


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("digest", sa.String(64), nullable=True))
    connection = op.get_bind()
    events = sa.table("events", sa.column("id", sa.Integer), sa.column("run_id", sa.String),
                      sa.column("payload", sa.Text), sa.column("digest", sa.String))
    seen: set[tuple[str, str]] = set()
    rows = connection.execute(sa.select(events.c.id, events.c.run_id, events.c.payload)
                              .order_by(events.c.id)).all()
    for event_id, run_id, payload in rows:
        digest = hashlib.sha256(payload.encode()).hexdigest()
        if (run_id, digest) in seen:
            connection.execute(sa.delete(events).where(events.c.id == event_id))
            continue
        seen.add((run_id, digest))
        connection.execute(sa.update(events).where(events.c.id == event_id)
                           .values(digest=digest))
    with op.batch_alter_table("events") as batch:
        batch.alter_column("digest", existing_type=sa.String(64), nullable=False)
        batch.create_unique_constraint(UNIQUE, ["run_id", "digest"])


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint(UNIQUE, type_="unique")
        batch.drop_column("digest")
