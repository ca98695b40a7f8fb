"""Job lanes: a station runs one 'chip' job and one 'compute' job at a time, so evaluation
and analysis never hold up a readback; readouts keep each read block's start time.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
RUNNING = sa.text("status = 'running'")
COMPUTE_KINDS = ("evaluate", "analyze")  # the job kinds that never touch the instrument


def _one_running(name: str, columns: list[str]) -> None:
    op.create_index(name, "jobs", columns, unique=True, sqlite_where=RUNNING, postgresql_where=RUNNING)


def upgrade() -> None:
    # Indexes first: SQLite's batch mode copies the table and would carry them along.
    op.drop_index("uq_jobs_one_running_per_station", table_name="jobs")
    op.drop_index("ix_jobs_due", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lane", sa.String(length=8), nullable=False, server_default="chip"))
        batch.create_check_constraint(op.f("ck_jobs_lane_known"), "lane IN ('chip', 'compute')")
    jobs = sa.table("jobs", sa.column("kind", sa.String), sa.column("lane", sa.String))
    op.execute(jobs.update().where(jobs.c.kind.in_(COMPUTE_KINDS)).values(lane="compute"))
    op.create_index("ix_jobs_due", "jobs", ["station_id", "lane", "status", "priority", "run_at_s"])
    _one_running("uq_jobs_one_running_per_lane", ["station_id", "lane"])
    with op.batch_alter_table("readouts") as batch:
        batch.add_column(sa.Column("block_starts", JSON_DOC, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("readouts") as batch:
        batch.drop_column("block_starts")
    op.drop_index("uq_jobs_one_running_per_lane", table_name="jobs")
    op.drop_index("ix_jobs_due", table_name="jobs")
    # Back to one running job per station: a second running job (compute) becomes interrupted.
    jobs = sa.table("jobs", sa.column("lane", sa.String), sa.column("status", sa.String))
    op.execute(
        jobs.update().where(jobs.c.lane == "compute", jobs.c.status == "running").values(status="interrupted")
    )
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_lane_known"), type_="check")
        batch.drop_column("lane")
    op.create_index("ix_jobs_due", "jobs", ["station_id", "status", "priority", "run_at_s"])
    _one_running("uq_jobs_one_running_per_station", ["station_id"])
