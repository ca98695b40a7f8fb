"""Board state continuity: an experiment may wait in `board_state_lost` (still holding its
station), says why in `status_reason`; a readout taken after the board lost its state
carries the reason in `suspect`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEX = "uq_experiments_one_active_per_station"
ACTIVE = sa.text("status IN ('created', 'programming', 'reading', 'board_state_lost')")
ACTIVE_BEFORE = sa.text("status IN ('created', 'programming', 'reading')")


def _one_active(where: sa.TextClause) -> None:
    op.create_index(
        INDEX, "experiments", ["station_id"], unique=True, sqlite_where=where, postgresql_where=where
    )


def upgrade() -> None:
    op.drop_index(INDEX, table_name="experiments")
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("status_reason", sa.Text(), nullable=True))
    _one_active(ACTIVE)
    with op.batch_alter_table("readouts") as batch:
        batch.add_column(sa.Column("suspect", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("readouts") as batch:
        batch.drop_column("suspect")
    op.drop_index(INDEX, table_name="experiments")
    # Without the status an experiment waiting for a decision counts as failed.
    experiments = sa.table("experiments", sa.column("status", sa.String))
    op.execute(experiments.update().where(experiments.c.status == "board_state_lost").values(status="failed"))
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("status_reason")
    _one_active(ACTIVE_BEFORE)
