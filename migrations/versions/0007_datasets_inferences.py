"""Data sets and inference results: `datasets` (uploaded image arrays stored once by content
hash, and the built-in digits and CIFAR-10 test sets, registered here with no bytes) and
`inferences` (one inference job's settings, its readout and its logits).

Downgrade drops both tables and everything stored in them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# The built-in sets as of this revision: (name, builtin, split, images, C, H, W, classes).
BUILTINS = (
    ("digits (test)", "digits", "test", 449, 1, 8, 8, 10),
    ("CIFAR-10 (test)", "cifar10", "test", 10_000, 3, 32, 32, 10),
)


def upgrade() -> None:
    datasets = op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("sha256", sa.String(length=80), nullable=False),
        sa.Column("builtin", sa.String(length=16), nullable=True),
        sa.Column("split", sa.String(length=8), nullable=True),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("n_images", sa.Integer(), nullable=False),
        sa.Column("channels", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(length=8), nullable=False),
        sa.Column("layout", sa.String(length=4), nullable=False),
        sa.Column("n_classes", sa.Integer(), nullable=True),
        sa.Column("normalisation", JSON_DOC, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("content IS NOT NULL OR builtin IS NOT NULL", name=op.f("ck_datasets_has_images")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("sha256", name=op.f("uq_datasets_sha256")),
    )
    op.create_table(
        "inferences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("readout_id", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("settings", JSON_DOC, nullable=False),
        sa.Column("summary", JSON_DOC, nullable=True),
        sa.Column("logits_shape", JSON_DOC, nullable=True),
        sa.Column("logits_blob", sa.LargeBinary(), nullable=True),
        sa.Column("logits_len", sa.Integer(), nullable=True),
        sa.Column("logits_dtype", sa.String(length=8), nullable=True),
        sa.Column("logits_crc32", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"],
                                name=op.f("fk_inferences_experiment_id_experiments"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"],
                                name=op.f("fk_inferences_dataset_id_datasets"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["readout_id"], ["readouts.id"],
                                name=op.f("fk_inferences_readout_id_readouts"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"],
                                name=op.f("fk_inferences_job_id_jobs"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inferences")),
    )  # fmt: skip
    for column in ("experiment_id", "dataset_id", "readout_id", "job_id"):
        op.create_index(op.f(f"ix_inferences_{column}"), "inferences", [column])
    op.bulk_insert(datasets, [
        {"name": name, "sha256": f"builtin:{builtin}:{split}", "builtin": builtin, "split": split,
         "size_bytes": 0, "n_images": n, "channels": c, "height": h, "width": w, "dtype": "uint8",
         "layout": "NHWC", "n_classes": classes, "created_at": datetime.now(UTC)}
        for name, builtin, split, n, c, h, w, classes in BUILTINS
    ])  # fmt: skip


def downgrade() -> None:
    for column in ("experiment_id", "dataset_id", "readout_id", "job_id"):
        op.drop_index(op.f(f"ix_inferences_{column}"), table_name="inferences")
    op.drop_table("inferences")
    op.drop_table("datasets")
