"""The dashboard database's schema, as Alembic revisions (``versions/``), applied on start.

:func:`upgrade` brings any database to the newest revision: an empty one is created from the
models, one made before migrations existed (edgefed up to commit ace9c78: tables, no
``alembic_version``) is first stamped as the baseline revision, which is exactly that schema.
After changing ``models.py`` or ``common.record.ClientRecord``, write a revision with
``alembic -c server/dashboard/migrations/alembic.ini revision --autogenerate -m "..."``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect

from server.dashboard.models import Base

HERE = Path(__file__).resolve().parent
BASELINE = "0001"  # the schema of ace9c78, made by ``create_all``


def alembic_config(engine: Engine | None = None) -> Config:
    """Alembic's configuration for this folder; revisions run on ``engine`` when given (else on
    the ``sqlalchemy.url`` of ``alembic.ini``, for the command line)."""
    config = Config(HERE / "alembic.ini")
    config.set_main_option("script_location", str(HERE))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> None:
    """Migrate the database to the newest revision (see the module docstring); an empty one
    is created from the models and stamped as the newest (Alembic's recipe: what the revisions
    build from nothing is the same schema, tested, but slower to build)."""
    config = alembic_config(engine)
    tables = set(inspect(engine).get_table_names())
    if "runs" not in tables:
        Base.metadata.create_all(engine)
        command.stamp(config, "head")
        return
    if "alembic_version" not in tables:
        command.stamp(config, BASELINE)
    command.upgrade(config, "head")
