"""Experiments stored before the credible-results defaults say how they ran (issue 13).

Three config fields are new, and their defaults differ from what an older experiment ran with:
``lr_schedule`` (now ``across-rounds``; clients restarted a cosine every round),
``client_loss`` (now ``logit-adjusted``; clients trained on plain cross-entropy) and
``pretrain_samples`` (now the whole server half; pretraining used a 6,000-sample subsample).
A stored config lacking a field gets the value it really ran with, so an old run never shows,
or is re-launched with, settings it did not have.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import json
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

RAN_WITH = {"lr_schedule": "per-round", "client_loss": "cross-entropy", "pretrain_samples": 6000}

experiments = sa.table("experiments", sa.column("id", sa.Integer),
                       sa.column("config_json", sa.Text))


def _rewrite(change: Callable[[dict], dict]) -> None:
    connection = op.get_bind()
    for experiment_id, stored in connection.execute(
            sa.select(experiments.c.id, experiments.c.config_json)).all():
        config = json.loads(stored)
        changed = change(config)
        if changed != config:
            connection.execute(sa.update(experiments).where(experiments.c.id == experiment_id)
                               .values(config_json=json.dumps(changed)))


def upgrade() -> None:
    _rewrite(lambda config: RAN_WITH | config)


def downgrade() -> None:
    _rewrite(lambda config: {k: v for k, v in config.items() if k not in RAN_WITH})
