"""The built-in training splits registered as data sets, so an experiment can name one by id
as its calibration set (AdaBS) like any other set; 0007 registered only the test splits.
Like those, the rows hold no bytes: the images load from the built-in's files, and a
training split used to calibrate is augmented as the networks' batch norm was trained.

Downgrade removes the two rows (and, by cascade, inferences run on them).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# (name, builtin, split, images, C, H, W, classes); a literal: migrations outlive the code.
TRAINING_SPLITS = (
    ("digits (train)", "digits", "train", 1_348, 1, 8, 8, 10),
    ("CIFAR-10 (train)", "cifar10", "train", 50_000, 3, 32, 32, 10),
)
TEXT = ("name", "sha256", "builtin", "split", "dtype", "layout")
NUMBERS = ("size_bytes", "n_images", "channels", "height", "width", "n_classes")
datasets = sa.table(
    "datasets",
    *(sa.column(name, sa.String) for name in TEXT),
    *(sa.column(name, sa.BigInteger) for name in NUMBERS),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    op.bulk_insert(datasets, [
        {"name": name, "sha256": f"builtin:{builtin}:{split}", "builtin": builtin, "split": split,
         "size_bytes": 0, "n_images": n, "channels": c, "height": h, "width": w, "dtype": "uint8",
         "layout": "NHWC", "n_classes": classes, "created_at": datetime.now(UTC)}
        for name, builtin, split, n, c, h, w, classes in TRAINING_SPLITS
    ])  # fmt: skip


def downgrade() -> None:
    hashes = [f"builtin:{builtin}:{split}" for _, builtin, split, *_ in TRAINING_SPLITS]
    op.execute(datasets.delete().where(datasets.c.sha256.in_(hashes)))
