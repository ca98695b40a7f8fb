"""Stored settings name their GDC statistic: experiments (`evaluation.gdc_statistic`),
evaluations and inferences stored before the statistic was configurable were all run with
`column-sum` (GDC's gain from the signed column sums under an all-ones input), and now say
so, rather than reading back as today's default. Rows that name one keep it.

Downgrade removes the key from every row (the older code refuses a spec that has it).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
KEY = "gdc_statistic"
BEFORE = "column-sum"  # the only statistic before this revision (a literal: migrations outlive the code)
Settings = dict[str, Any]


def _rewrite(table: str, change: Callable[[Settings], Settings]) -> None:
    """Apply `change` to every row's settings, writing back the rows it changed."""
    bind = op.get_bind()
    rows = sa.table(table, sa.column("id", sa.Integer), sa.column("settings", JSON_DOC))
    for row_id, settings in bind.execute(sa.select(rows.c.id, rows.c.settings)).all():
        changed = change(dict(settings or {}))
        if changed != settings:
            bind.execute(sa.update(rows).where(rows.c.id == row_id).values(settings=changed))


def _named(settings: Settings) -> Settings:
    return {KEY: BEFORE, **settings}


def _unnamed(settings: Settings) -> Settings:
    return {k: v for k, v in settings.items() if k != KEY}


def _experiment(per_evaluation: Callable[[Settings], Settings]) -> Callable[[Settings], Settings]:
    def change(settings: Settings) -> Settings:
        evaluation = settings.get("evaluation")
        if not isinstance(evaluation, dict):
            return settings
        return {**settings, "evaluation": per_evaluation(evaluation)}

    return change


def upgrade() -> None:
    _rewrite("experiments", _experiment(_named))
    _rewrite("evaluations", _named)
    _rewrite("inferences", _named)


def downgrade() -> None:
    _rewrite("experiments", _experiment(_unnamed))
    _rewrite("evaluations", _unnamed)
    _rewrite("inferences", _unnamed)
