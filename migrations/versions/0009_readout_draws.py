"""Read draws: a campaign may read the same programmed chip several times at each scheduled
offset (`schedule.reads_per_point`); each read is a readout with its `draw` index (0 first),
unique per (run, offset, draw). Readouts stored before this revision are draw 0.

Downgrade keeps draw 0 of each point (the older schema holds one readout per offset): the
other draws go, with their blocks, evaluations and inferences.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UNIQUE_BEFORE = "uq_readouts_run_id_offset_s"
UNIQUE = "uq_readouts_run_id_offset_s_draw"
# Rows that point at a readout (all ON DELETE CASCADE; deleted explicitly, since SQLite
# migrates with foreign keys off: `hwctl.store.migrate`).
CHILDREN = ("evaluations", "readout_blocks", "inferences")


def upgrade() -> None:
    with op.batch_alter_table("readouts") as batch:
        batch.add_column(sa.Column("draw", sa.Integer(), nullable=False, server_default="0"))
        batch.drop_constraint(UNIQUE_BEFORE, type_="unique")
        batch.create_unique_constraint(UNIQUE, ["run_id", "offset_s", "draw"])


def downgrade() -> None:
    later_draws = sa.select(sa.column("id")).select_from(sa.table("readouts")).where(sa.column("draw") > 0)
    for child in CHILDREN:
        op.execute(
            sa.table(child, sa.column("readout_id")).delete().where(sa.column("readout_id").in_(later_draws))
        )
    op.execute(sa.table("readouts", sa.column("draw")).delete().where(sa.column("draw") > 0))
    with op.batch_alter_table("readouts") as batch:
        batch.drop_constraint(UNIQUE, type_="unique")
        batch.create_unique_constraint(UNIQUE_BEFORE, ["run_id", "offset_s"])
        batch.drop_column("draw")
