"""One active experiment per station, enforced by the database (every mapping starts at
tile 0, so two active experiments on one station overwrite each other's devices).

A database from before the API refused a second experiment may already hold several
active ones on a station. Refusing to upgrade would leave the operator stuck: the service
will not start on an unmigrated database, so the API's cancel is out of reach. Instead the
newest one per station stays (its programming is, or will be, what the devices hold) and
every older one is cancelled exactly as POST /experiments/{id}/cancel does it: its waiting
jobs are cancelled with a note in their `error`, a running one is asked to stop, and each
cancelled experiment is logged. Downgrade drops the index; the cancellations stay.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ACTIVE = ("created", "programming", "reading")  # as of this revision
ACTIVE_SQL = sa.text("status IN ('created', 'programming', 'reading')")
INDEX = "uq_experiments_one_active_per_station"

log = logging.getLogger("alembic.runtime.migration")
experiments = sa.table(
    "experiments",
    sa.column("id", sa.Integer),
    sa.column("station_id", sa.Integer),
    sa.column("status", sa.String),
)
jobs = sa.table(
    "jobs",
    sa.column("experiment_id", sa.Integer),
    sa.column("status", sa.String),
    sa.column("cancel_requested", sa.Boolean),
    sa.column("error", sa.Text),
)


def _superseded() -> list[tuple[int, int, int]]:
    """(experiment, station, newest active experiment of that station) for every older active one."""
    newer = experiments.alias("newer")
    newest = (
        sa.select(sa.func.max(newer.c.id))
        .where(newer.c.station_id == experiments.c.station_id, newer.c.status.in_(ACTIVE))
        .scalar_subquery()
    )
    query = (
        sa.select(experiments.c.id, experiments.c.station_id, newest)
        .where(experiments.c.status.in_(ACTIVE), experiments.c.id < newest)
        .order_by(experiments.c.id)
    )
    return [(int(e), int(s), int(n)) for e, s, n in op.get_bind().execute(query)]


def _cancel(experiment_id: int, station_id: int, newest_id: int) -> None:
    note = f"cancelled by migration 0004: station {station_id} runs newer experiment {newest_id}"
    log.warning("experiment %d %s", experiment_id, note)
    mine = jobs.c.experiment_id == experiment_id
    op.execute(jobs.update().where(mine, jobs.c.status.in_(("queued", "interrupted")))
               .values(status="cancelled", error=note))  # fmt: skip
    op.execute(jobs.update().where(mine, jobs.c.status == "running").values(cancel_requested=True))
    op.execute(experiments.update().where(experiments.c.id == experiment_id).values(status="cancelled"))


def upgrade() -> None:
    for superseded in _superseded():
        _cancel(*superseded)
    op.create_index(INDEX, "experiments", ["station_id"], unique=True,
                    sqlite_where=ACTIVE_SQL, postgresql_where=ACTIVE_SQL)  # fmt: skip


def downgrade() -> None:
    op.drop_index(INDEX, table_name="experiments")
