"""Alembic's entry point: runs the revisions on the dashboard's engine (or alembic.ini's URL).

Batch mode (``render_as_batch``): SQLite alters a table by copying it, other databases in place.
Copying means dropping the old table, and SQLite's DROP TABLE deletes its rows first, cascading
to the rows that reference them while foreign keys are on; so on SQLite the revisions run with
foreign keys off (SQLite ignores that pragma inside a transaction: it is set before), and
``PRAGMA foreign_key_check`` must find nothing before their transaction commits.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from server.dashboard.models import Base

config = context.config


def _foreign_keys(connection: Connection, on: bool) -> None:
    connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    connection.commit()


def _check_foreign_keys(connection: Connection) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise RuntimeError(f"the migration broke foreign keys (table, rowid, parent, fk): "
                           f"{broken[:10]}")


engine = config.attributes.get("engine") or create_engine(config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _foreign_keys(connection, on=False)
    try:
        with connection.begin():  # one transaction for all the revisions
            context.configure(connection=connection, target_metadata=Base.metadata,
                              render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
            if sqlite:
                _check_foreign_keys(connection)
    finally:
        if sqlite:
            _foreign_keys(connection, on=True)
