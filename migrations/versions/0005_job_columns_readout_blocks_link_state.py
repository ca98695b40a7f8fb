"""Readback jobs get real columns, partial readouts live in `readout_blocks`, stations carry
their link state.

- `jobs.run_id`, `jobs.scheduled_s`: the queue finds a run's pending readbacks and a later
  readback that fell due in SQL, instead of scanning JSON payloads in Python; backfilled
  from the payloads of existing readback jobs.
- `readout_blocks`: the blocks a readback has read so far (its checkpoint), one vector row
  per block. A checkpoint of an unfinished readback written before this revision (base64
  float32 inside the JSON) becomes one block row holding the devices read so far, read at
  the first block's time, so such a readback resumes where it stopped.
- `stations.link_state`, `link_down_since`, `link_attempts`, `worker_heartbeat_at`: what
  the station's worker knows of its board, for the API and health probes.

Downgrade drops them; a partial readout is then lost (its readback starts again).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import base64
import zlib

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
RUNNING = sa.text("status = 'running'")
UNFINISHED = ("queued", "running", "interrupted")  # as of this revision
jobs = sa.table(
    "jobs",
    sa.column("id", sa.Integer),
    sa.column("kind", sa.String),
    sa.column("status", sa.String),
    sa.column("payload", JSON_DOC),
    sa.column("checkpoint", JSON_DOC),
    sa.column("run_id", sa.Integer),
    sa.column("scheduled_s", sa.Float),
)


def _recreate_job_indexes() -> None:
    op.create_index("ix_jobs_due", "jobs", ["station_id", "lane", "status", "priority", "run_at_s"])
    op.create_index("uq_jobs_one_running_per_lane", "jobs", ["station_id", "lane"], unique=True,
                    sqlite_where=RUNNING, postgresql_where=RUNNING)  # fmt: skip


def _backfill_readback_columns() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(jobs.c.id, jobs.c.payload).where(jobs.c.kind == "readback")).all()
    for job_id, payload in rows:
        op.execute(
            jobs.update().where(jobs.c.id == job_id)
            .values(run_id=payload.get("run_id"), scheduled_s=payload.get("scheduled_s"))
        )  # fmt: skip


def _checkpoints_to_blocks(blocks: sa.Table) -> None:
    """Unfinished readbacks' base64 checkpoints become their block rows."""
    conn = op.get_bind()
    query = sa.select(jobs.c.id, jobs.c.checkpoint).where(
        jobs.c.kind == "readback", jobs.c.status.in_(UNFINISHED), jobs.c.checkpoint.is_not(None)
    )
    for job_id, checkpoint in conn.execute(query).all():
        if not checkpoint or "g_us_b64" not in checkpoint:
            continue
        values = base64.b64decode(checkpoint["g_us_b64"])
        next_device = int(checkpoint["next_device"])
        firsts = [int(d) for d in checkpoint["block_first_devices"]]
        stops = [*firsts[1:], next_device]
        for first, stop, read_s in zip(firsts, stops, checkpoint["block_starts_s"], strict=True):
            blob = values[4 * first : 4 * stop]  # float32
            op.execute(blocks.insert().values(
                job_id=job_id, first_device=first, read_s=float(read_s), g_blob=blob, g_len=stop - first,
                g_dtype="float32", g_crc32=zlib.crc32(blob),
            ))  # fmt: skip
        kept = {"next_device": next_device, "temperature_c": checkpoint.get("temperature_c")}
        op.execute(jobs.update().where(jobs.c.id == job_id).values(checkpoint=kept))


def upgrade() -> None:
    with op.batch_alter_table("stations") as batch:
        batch.add_column(sa.Column("link_state", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("link_down_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("link_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("worker_heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    # Indexes first: SQLite's batch mode copies the table and would carry them along.
    op.drop_index("uq_jobs_one_running_per_lane", table_name="jobs")
    op.drop_index("ix_jobs_due", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("run_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("scheduled_s", sa.Float(), nullable=True))
        batch.create_foreign_key(op.f("fk_jobs_run_id_programming_runs"), "programming_runs",
                                 ["run_id"], ["id"], ondelete="CASCADE")  # fmt: skip
    op.create_index(op.f("ix_jobs_run_id"), "jobs", ["run_id"])
    _recreate_job_indexes()
    _backfill_readback_columns()
    blocks = op.create_table(
        "readout_blocks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("first_device", sa.Integer(), nullable=False),
        sa.Column("read_s", sa.Float(), nullable=False),
        sa.Column("g_blob", sa.LargeBinary(), nullable=False),
        sa.Column("g_len", sa.Integer(), nullable=False),
        sa.Column("g_dtype", sa.String(length=8), nullable=False),
        sa.Column("g_crc32", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_readout_blocks_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_readout_blocks")),
        sa.UniqueConstraint("job_id", "first_device", name=op.f("uq_readout_blocks_job_id_first_device")),
    )
    op.create_index(op.f("ix_readout_blocks_job_id"), "readout_blocks", ["job_id"])
    _checkpoints_to_blocks(blocks)


def downgrade() -> None:
    # The older worker expects the values inside the checkpoint: its readbacks start again.
    op.execute(jobs.update().where(jobs.c.kind == "readback").values(checkpoint=None))
    op.drop_index(op.f("ix_readout_blocks_job_id"), table_name="readout_blocks")
    op.drop_table("readout_blocks")
    op.drop_index(op.f("ix_jobs_run_id"), table_name="jobs")
    op.drop_index("uq_jobs_one_running_per_lane", table_name="jobs")
    op.drop_index("ix_jobs_due", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("fk_jobs_run_id_programming_runs"), type_="foreignkey")
        batch.drop_column("scheduled_s")
        batch.drop_column("run_id")
    _recreate_job_indexes()
    with op.batch_alter_table("stations") as batch:
        batch.drop_column("worker_heartbeat_at")
        batch.drop_column("link_attempts")
        batch.drop_column("link_down_since")
        batch.drop_column("link_state")
