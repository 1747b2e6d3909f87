"""Experiment ids never reused after a delete, in an upgraded database too (issue 11).

SQLite gives a plain ``INTEGER PRIMARY KEY`` the highest id + 1, so deleting the newest
experiment handed its id to the next one; ``AUTOINCREMENT`` keeps the highest id ever used in
``sqlite_sequence`` instead. Databases created since ``models.py`` asked for it have it; one made
at an earlier revision gets it here: the table is rebuilt with it (batch mode: a copy, then a
rename), and copying the rows with their ids seeds ``sqlite_sequence`` with the highest id
stored. The rebuild drops the old table, which with foreign keys on would cascade to ``runs``:
``env.py`` runs the revisions with them off and checks them before committing.

Other databases (PostgreSQL) never reuse a sequence's values: nothing to do.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("experiments", recreate="always",
                              table_kwargs={"sqlite_autoincrement": autoincrement}):
        pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
