"""The experiment rows a campaign's jobs read and move on: its spec, its status (with the
reason), the compensation methods already evaluated on a readout, and what its station's
board should still hold (the reference a reconnecting worker checks the board against)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, select, update

from hwctl.experiment_spec import ExperimentSpec
from hwctl.store.errors import NotFoundError
from hwctl.store.readouts import device_read_times_s, load_programming_result, load_readout
from hwctl.store.schema import evaluations, experiments, jobs, programming_runs, readouts
from hwctl.vocabulary import (
    ACTIVE_EXPERIMENT_STATUSES,
    PROGRESSING_EXPERIMENT_STATUSES,
    CompensationMethod,
    ExperimentStatus,
    JobKind,
    JobStatus,
)


def load_spec(conn: Connection, experiment_id: int) -> ExperimentSpec:
    """The experiment's specification as the API stored it."""
    row = conn.execute(select(experiments.c.settings).where(experiments.c.id == experiment_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"experiment {experiment_id} does not exist")
    return ExperimentSpec.model_validate(row.settings)


@dataclass(frozen=True)
class ExperimentState:
    status: ExperimentStatus
    reason: str | None


def experiment_state(conn: Connection, experiment_id: int) -> ExperimentState:
    row = conn.execute(
        select(experiments.c.status, experiments.c.status_reason).where(experiments.c.id == experiment_id)
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"experiment {experiment_id} does not exist")
    return ExperimentState(ExperimentStatus(row.status), row.status_reason)


def move_experiment(
    conn: Connection, experiment_id: int, status: ExperimentStatus, reason: str | None = None
) -> bool:
    """Move an experiment on from one of the statuses jobs move it through; one cancelled,
    failed, done or waiting for an operator stays as it is (a job finishing after the
    user's cancel must not bring it back). True if it moved."""
    moved = conn.execute(
        update(experiments)
        .where(experiments.c.id == experiment_id, experiments.c.status.in_(PROGRESSING_EXPERIMENT_STATUSES))
        .values(status=status, status_reason=reason)
    )
    return moved.rowcount > 0


MISSED_LISTED = 5  # missed readbacks named in a done experiment's reason; the rest are counted


def missed_readbacks(conn: Connection, experiment_id: int, run_id: int) -> str | None:
    """What an experiment that ends done must still say (None if nothing): the readbacks of
    run `run_id` that were missed, each with its offset and why, so a campaign with holes in
    its schedule does not read as complete."""
    rows = conn.execute(
        select(jobs.c.status, jobs.c.payload, jobs.c.error)
        .where(jobs.c.experiment_id == experiment_id, jobs.c.kind == JobKind.READBACK)
        .order_by(jobs.c.run_at_s, jobs.c.id)
    ).all()  # fmt: skip
    of_run = [row for row in rows if row.payload.get("run_id") == run_id]
    missed = [row for row in of_run if row.status == JobStatus.MISSED]
    if not missed:
        return None
    listed = missed[:MISSED_LISTED]
    named = "; ".join(f"{row.payload['offset_s']:g} s ({row.error or 'missed'})" for row in listed)
    more = f"; and {len(missed) - MISSED_LISTED} more" if len(missed) > MISSED_LISTED else ""
    return f"{len(missed)} of {len(of_run)} scheduled readbacks missed: {named}{more}"


def fail_experiment(conn: Connection, experiment_id: int, reason: str) -> bool:
    """An active experiment (waiting for an operator included) fails, saying why."""
    failed = conn.execute(
        update(experiments)
        .where(experiments.c.id == experiment_id, experiments.c.status.in_(ACTIVE_EXPERIMENT_STATUSES))
        .values(status=ExperimentStatus.FAILED, status_reason=reason)
    )
    return failed.rowcount > 0


def active_experiment_id(conn: Connection, station_id: int) -> int | None:
    """The experiment holding the station's devices, if any."""
    found = conn.execute(
        select(experiments.c.id).where(
            experiments.c.station_id == station_id, experiments.c.status.in_(ACTIVE_EXPERIMENT_STATUSES)
        )
    ).scalar()
    return None if found is None else int(found)


def evaluated_methods(conn: Connection, readout_id: int) -> set[CompensationMethod]:
    """The compensation methods whose accuracy is already stored for a readout."""
    stored = conn.execute(select(evaluations.c.method).where(evaluations.c.readout_id == readout_id))
    return {CompensationMethod(method) for method in stored.scalars()}


@dataclass(frozen=True)
class BoardReference:
    """What the station's board should hold: the last stored conductances of the active
    experiment's programmed devices (its latest readout, else the programming's last
    verify), per device with when it was read and when it was programmed (board s)."""

    experiment_id: int
    addresses: npt.NDArray[np.uint32]
    g_us: npt.NDArray[np.float32]
    read_s: npt.NDArray[np.float64]
    programmed_s: npt.NDArray[np.float64]


def board_reference(conn: Connection, station_id: int) -> BoardReference | None:
    """The reference of the station's active experiment with a finished programming run
    (None: nothing programmed on the board that the service relies on)."""
    active = conn.execute(
        select(experiments.c.id, programming_runs.c.id.label("run_id"))
        .join(programming_runs, programming_runs.c.experiment_id == experiments.c.id)
        .where(experiments.c.station_id == station_id, experiments.c.status.in_(ACTIVE_EXPERIMENT_STATUSES))
        .where(programming_runs.c.ended_at.is_not(None))
        .order_by(programming_runs.c.id.desc())
        .limit(1)
    ).one_or_none()
    if active is None:
        return None
    programmed = load_programming_result(conn, active.run_id)
    latest = conn.execute(
        select(readouts.c.id)
        .where(readouts.c.run_id == active.run_id)
        .order_by(readouts.c.board_time_s.desc())
    ).first()
    if latest is None:
        g_us, read_s = programmed.g_final_us, programmed.programmed_s
    else:
        g_us, read_s = load_readout(conn, latest.id).g_us, device_read_times_s(conn, latest.id)
    return BoardReference(active.id, programmed.addresses, g_us, read_s, programmed.programmed_s)
