"""Alembic's entry point: runs the revisions on the dashboard's engine (or alembic.ini's URL).

Batch mode (``render_as_batch``): SQLite alters a table by copying it, other databases in place.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from server.dashboard.models import Base

config = context.config
engine = config.attributes.get("engine") or create_engine(config.get_main_option("sqlalchemy.url"))
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
