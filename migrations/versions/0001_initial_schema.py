"""Initial schema: stations, networks, mappings, programming runs, readouts (per-device
vectors as blobs), evaluations, drift fits, calibrations, experiments and the job queue.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# In creation order; dropped in reverse.
TABLES = (
    "networks",
    "stations",
    "calibrations",
    "experiments",
    "jobs",
    "mappings",
    "programming_runs",
    "device_fits",
    "readouts",
    "evaluations",
)
VECTOR_BLOBS = {
    "programming_runs": ("g_final_blob", "iterations_blob", "status_blob", "programmed_s_blob"),
    "readouts": ("g_blob",),
    "device_fits": ("nu_blob", "g_t0_blob", "r2_blob"),
}


def upgrade() -> None:
    op.create_table(
        "networks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("architecture", sa.String(length=64), nullable=False),
        sa.Column("checkpoint", sa.LargeBinary(), nullable=True),
        sa.Column("checkpoint_path", sa.String(length=1024), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("meta", JSON_DOC, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "checkpoint IS NOT NULL OR checkpoint_path IS NOT NULL", name=op.f("ck_networks_has_checkpoint")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_networks")),
    )
    op.create_table(
        "stations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("resource", sa.String(length=256), nullable=False),
        sa.Column("chip_serial", sa.String(length=64), nullable=False),
        sa.Column("tiles", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("cols", sa.Integer(), nullable=False),
        sa.Column("amplitude_limit_ua", sa.Float(), nullable=False),
        sa.Column("clock_kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stations")),
        sa.UniqueConstraint("name", name=op.f("uq_stations_name")),
    )
    op.create_table(
        "calibrations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("station_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["station_id"],
            ["stations.id"],
            name=op.f("fk_calibrations_station_id_stations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calibrations")),
    )
    op.create_index(op.f("ix_calibrations_station_id"), "calibrations", ["station_id"], unique=False)

    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("network_id", sa.Integer(), nullable=False),
        sa.Column("station_id", sa.Integer(), nullable=False),
        sa.Column("settings", JSON_DOC, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["network_id"],
            ["networks.id"],
            name=op.f("fk_experiments_network_id_networks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["station_id"],
            ["stations.id"],
            name=op.f("fk_experiments_station_id_stations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
    )
    op.create_index(op.f("ix_experiments_network_id"), "experiments", ["network_id"], unique=False)
    op.create_index(op.f("ix_experiments_station_id"), "experiments", ["station_id"], unique=False)

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("station_id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=True),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("run_at_s", sa.Float(), nullable=False),
        sa.Column("window_s", sa.Float(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("heartbeat_s", sa.Float(), nullable=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("progress_message", sa.Text(), nullable=False),
        sa.Column("checkpoint", JSON_DOC, nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("result", JSON_DOC, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_s", sa.Float(), nullable=True),
        sa.Column("finished_s", sa.Float(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted', 'missed')",
            name=op.f("ck_jobs_status_known"),
        ),
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name=op.f("ck_jobs_progress_fraction")),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_jobs_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["station_id"], ["stations.id"], name=op.f("fk_jobs_station_id_stations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_jobs_idempotency_key")),
    )
    op.create_index("ix_jobs_due", "jobs", ["station_id", "status", "priority", "run_at_s"], unique=False)
    op.create_index(op.f("ix_jobs_experiment_id"), "jobs", ["experiment_id"], unique=False)
    op.create_index(op.f("ix_jobs_station_id"), "jobs", ["station_id"], unique=False)
    op.create_index(
        "uq_jobs_one_running_per_station",
        "jobs",
        ["station_id"],
        unique=True,
        sqlite_where=sa.text("status = 'running'"),
        postgresql_where=sa.text("status = 'running'"),
    )

    op.create_table(
        "mappings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("network_id", sa.Integer(), nullable=False),
        sa.Column("station_id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=True),
        sa.Column("device_map", sa.LargeBinary(), nullable=False),
        sa.Column("n_devices", sa.Integer(), nullable=False),
        sa.Column("utilisation", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_mappings_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_mappings_network_id_networks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["station_id"], ["stations.id"], name=op.f("fk_mappings_station_id_stations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mappings")),
    )
    op.create_index(op.f("ix_mappings_experiment_id"), "mappings", ["experiment_id"], unique=False)
    op.create_index(op.f("ix_mappings_network_id"), "mappings", ["network_id"], unique=False)
    op.create_index(op.f("ix_mappings_station_id"), "mappings", ["station_id"], unique=False)

    op.create_table(
        "programming_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mapping_id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=True),
        sa.Column("settings", JSON_DOC, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("g_final_blob", sa.LargeBinary(), nullable=True),
        sa.Column("g_final_len", sa.Integer(), nullable=True),
        sa.Column("g_final_dtype", sa.String(length=8), nullable=True),
        sa.Column("g_final_crc32", sa.BigInteger(), nullable=True),
        sa.Column("iterations_blob", sa.LargeBinary(), nullable=True),
        sa.Column("iterations_len", sa.Integer(), nullable=True),
        sa.Column("iterations_dtype", sa.String(length=8), nullable=True),
        sa.Column("iterations_crc32", sa.BigInteger(), nullable=True),
        sa.Column("status_blob", sa.LargeBinary(), nullable=True),
        sa.Column("status_len", sa.Integer(), nullable=True),
        sa.Column("status_dtype", sa.String(length=8), nullable=True),
        sa.Column("status_crc32", sa.BigInteger(), nullable=True),
        sa.Column("programmed_s_blob", sa.LargeBinary(), nullable=True),
        sa.Column("programmed_s_len", sa.Integer(), nullable=True),
        sa.Column("programmed_s_dtype", sa.String(length=8), nullable=True),
        sa.Column("programmed_s_crc32", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_programming_runs_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["mapping_id"],
            ["mappings.id"],
            name=op.f("fk_programming_runs_mapping_id_mappings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_programming_runs")),
    )
    op.create_index(
        op.f("ix_programming_runs_experiment_id"), "programming_runs", ["experiment_id"], unique=False
    )
    op.create_index(op.f("ix_programming_runs_mapping_id"), "programming_runs", ["mapping_id"], unique=False)

    op.create_table(
        "device_fits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("nu_blob", sa.LargeBinary(), nullable=False),
        sa.Column("nu_len", sa.Integer(), nullable=False),
        sa.Column("nu_dtype", sa.String(length=8), nullable=False),
        sa.Column("nu_crc32", sa.BigInteger(), nullable=False),
        sa.Column("g_t0_blob", sa.LargeBinary(), nullable=False),
        sa.Column("g_t0_len", sa.Integer(), nullable=False),
        sa.Column("g_t0_dtype", sa.String(length=8), nullable=False),
        sa.Column("g_t0_crc32", sa.BigInteger(), nullable=False),
        sa.Column("r2_blob", sa.LargeBinary(), nullable=False),
        sa.Column("r2_len", sa.Integer(), nullable=False),
        sa.Column("r2_dtype", sa.String(length=8), nullable=False),
        sa.Column("r2_crc32", sa.BigInteger(), nullable=False),
        sa.Column("summary", JSON_DOC, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["programming_runs.id"],
            name=op.f("fk_device_fits_run_id_programming_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_fits")),
    )
    op.create_index(op.f("ix_device_fits_run_id"), "device_fits", ["run_id"], unique=False)

    op.create_table(
        "readouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("offset_s", sa.Float(), nullable=False),
        sa.Column("scheduled_s", sa.Float(), nullable=False),
        sa.Column("board_time_s", sa.Float(), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("temperature_c", sa.Float(), nullable=True),
        sa.Column("g_blob", sa.LargeBinary(), nullable=False),
        sa.Column("g_len", sa.Integer(), nullable=False),
        sa.Column("g_dtype", sa.String(length=8), nullable=False),
        sa.Column("g_crc32", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["programming_runs.id"],
            name=op.f("fk_readouts_run_id_programming_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_readouts")),
        sa.UniqueConstraint("run_id", "offset_s", name=op.f("uq_readouts_run_id_offset_s")),
    )
    op.create_index(op.f("ix_readouts_run_id"), "readouts", ["run_id"], unique=False)

    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("readout_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.Column("ci_low", sa.Float(), nullable=True),
        sa.Column("ci_high", sa.Float(), nullable=True),
        sa.Column("n_images", sa.Integer(), nullable=False),
        sa.Column("settings", JSON_DOC, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("method IN ('none', 'gdc', 'adabs')", name=op.f("ck_evaluations_method_known")),
        sa.ForeignKeyConstraint(
            ["readout_id"],
            ["readouts.id"],
            name=op.f("fk_evaluations_readout_id_readouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    op.create_index(op.f("ix_evaluations_readout_id"), "evaluations", ["readout_id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        # Raw vectors are incompressible floats: keep them out of line, uncompressed,
        # so writes skip pglz and one device's bytes are a direct substring fetch.
        for table, columns in VECTOR_BLOBS.items():
            for column in columns:
                op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE EXTERNAL")


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
