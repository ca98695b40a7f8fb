"""Readouts stored in blocks: a readout row may leave its blob empty (`g_blob`, `g_crc32`
NULL) and own `readout_blocks` rows instead (`readout_id`), each block with its own
length and CRC-32. The blocks a readback wrote as its checkpoint become the readout's
storage at its end (re-keyed from the job to the readout, not copied). Rows stored whole
before this revision stay as they are: the reader takes both forms.

On PostgreSQL the block blobs move out of line uncompressed (STORAGE EXTERNAL), like
every other vector, so one device's bytes are a substring fetch.

Downgrade joins each chunked readout's blocks into one blob again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import zlib

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FK = "fk_readout_blocks_readout_id_readouts"
UNIQUE = "uq_readout_blocks_readout_id_first_device"
INDEX = "ix_readout_blocks_readout_id"


def upgrade() -> None:
    with op.batch_alter_table("readout_blocks") as batch:
        batch.alter_column("job_id", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("readout_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(FK, "readouts", ["readout_id"], ["id"], ondelete="CASCADE")
        batch.create_unique_constraint(UNIQUE, ["readout_id", "first_device"])
    op.create_index(INDEX, "readout_blocks", ["readout_id"])
    with op.batch_alter_table("readouts") as batch:
        batch.alter_column("g_blob", existing_type=sa.LargeBinary(), nullable=True)
        batch.alter_column("g_crc32", existing_type=sa.BigInteger(), nullable=True)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE readout_blocks ALTER COLUMN g_blob SET STORAGE EXTERNAL")


def downgrade() -> None:
    bind = op.get_bind()
    blocks = sa.table(
        "readout_blocks", sa.column("readout_id", sa.Integer), sa.column("first_device", sa.Integer),
        sa.column("g_blob", sa.LargeBinary),
    )  # fmt: skip
    readouts = sa.table(
        "readouts", sa.column("id", sa.Integer), sa.column("g_blob", sa.LargeBinary),
        sa.column("g_crc32", sa.BigInteger),
    )  # fmt: skip
    chunked = bind.execute(sa.select(readouts.c.id).where(readouts.c.g_blob.is_(None))).scalars().all()
    for readout_id in chunked:
        parts = bind.execute(
            sa.select(blocks.c.g_blob)
            .where(blocks.c.readout_id == readout_id)
            .order_by(blocks.c.first_device)
        ).scalars()
        blob = b"".join(parts)
        bind.execute(
            readouts.update().where(readouts.c.id == readout_id).values(g_blob=blob, g_crc32=zlib.crc32(blob))
        )
    op.execute(blocks.delete().where(blocks.c.readout_id.is_not(None)))
    with op.batch_alter_table("readouts") as batch:
        batch.alter_column("g_crc32", existing_type=sa.BigInteger(), nullable=False)
        batch.alter_column("g_blob", existing_type=sa.LargeBinary(), nullable=False)
    op.drop_index(INDEX, table_name="readout_blocks")
    with op.batch_alter_table("readout_blocks") as batch:
        batch.drop_constraint(UNIQUE, type_="unique")
        batch.drop_constraint(FK, type_="foreignkey")
        batch.drop_column("readout_id")
        batch.alter_column("job_id", existing_type=sa.Integer(), nullable=False)
