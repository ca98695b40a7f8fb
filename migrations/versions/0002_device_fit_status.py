"""Drift fits keep each device's fit status, the reference time t0 and the per-bin
statistics (next to the chip-level summary).

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _columns() -> list[sa.Column]:
    """Nullable: fits stored before this revision have none of them."""
    return [
        sa.Column("status_blob", sa.LargeBinary(), nullable=True),
        sa.Column("status_len", sa.Integer(), nullable=True),
        sa.Column("status_dtype", sa.String(length=8), nullable=True),
        sa.Column("status_crc32", sa.BigInteger(), nullable=True),
        sa.Column("t0_s", sa.Float(), nullable=True),
        sa.Column("statistics", JSON_DOC, nullable=True),
    ]


def upgrade() -> None:
    with op.batch_alter_table("device_fits") as batch:
        for column in _columns():
            batch.add_column(column)
    if op.get_bind().dialect.name == "postgresql":
        # Like every vector blob (0001): uncompressed out-of-line, so it can be sliced.
        op.execute("ALTER TABLE device_fits ALTER COLUMN status_blob SET STORAGE EXTERNAL")


def downgrade() -> None:
    with op.batch_alter_table("device_fits") as batch:
        for column in reversed(_columns()):
            batch.drop_column(column.name)
