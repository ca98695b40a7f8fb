"""The experiment rows a campaign's jobs read and move on: its spec, its status, the
compensation methods already evaluated on a readout."""

from __future__ import annotations

from sqlalchemy import Connection, select, update

from hwctl.experiment_spec import ExperimentSpec
from hwctl.store.errors import NotFoundError
from hwctl.store.schema import evaluations, experiments
from hwctl.vocabulary import ACTIVE_EXPERIMENT_STATUSES, CompensationMethod, ExperimentStatus


def load_spec(conn: Connection, experiment_id: int) -> ExperimentSpec:
    """The experiment's specification as the API stored it."""
    row = conn.execute(select(experiments.c.settings).where(experiments.c.id == experiment_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"experiment {experiment_id} does not exist")
    return ExperimentSpec.model_validate(row.settings)


def move_experiment(conn: Connection, experiment_id: int, status: ExperimentStatus) -> bool:
    """Move an active experiment on; one already cancelled, failed or done stays as it is
    (a job finishing after the user's cancel must not bring it back). True if it moved."""
    moved = conn.execute(
        update(experiments)
        .where(experiments.c.id == experiment_id, experiments.c.status.in_(ACTIVE_EXPERIMENT_STATUSES))
        .values(status=status)
    )
    return moved.rowcount > 0


def evaluated_methods(conn: Connection, readout_id: int) -> set[CompensationMethod]:
    """The compensation methods whose accuracy is already stored for a readout."""
    stored = conn.execute(select(evaluations.c.method).where(evaluations.c.readout_id == readout_id))
    return {CompensationMethod(method) for method in stored.scalars()}
