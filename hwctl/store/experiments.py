"""An experiment's life as the API changes it: submitted with its program job, cancelled.

A station runs one experiment at a time (every mapping starts at tile 0): the submission
checks for an active one while holding the station row, and the partial unique index
`uq_experiments_one_active_per_station` refuses whatever a racing process slips past
the check (`holds_busy_station` recognises that refusal).

Submissions are the API's hottest write, so their statements are built once here and
compiled by `warm_up` at start-up (a statement built per call costs as much as running it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, select, update
from sqlalchemy.exc import IntegrityError

from hwctl import queue
from hwctl.store import records
from hwctl.store.errors import NotFoundError, StoreError
from hwctl.store.queries import EXPERIMENT_WITH_STATION
from hwctl.store.schema import experiments, jobs, networks, stations
from hwctl.vocabulary import ACTIVE_EXPERIMENT_STATUSES, ExperimentStatus, JobKind, JobStatus

# PostgreSQL names the index in the error; SQLite names the indexed column, the only unique
# one on experiments.station_id.
_ONE_ACTIVE_INDEX = "uq_experiments_one_active_per_station"
_SQLITE_ONE_ACTIVE = "UNIQUE constraint failed: experiments.station_id"


class ExperimentStateError(StoreError):
    """The experiment is not in a state that allows the requested change."""


@dataclass(frozen=True)
class Station:
    """What a submission is checked against: the station's clock and pulse limit."""

    id: int
    clock_kind: str
    amplitude_limit_ua: float


@dataclass(frozen=True)
class Targets:
    """What a submission names, looked up in one round trip: None where it does not exist."""

    station: Station | None
    network_name: str | None
    architecture: str | None


@dataclass(frozen=True)
class StationHolder:
    """The experiment holding a station, if any, and when its next readback is due."""

    station: str
    experiment_id: int | None
    status: ExperimentStatus | None
    next_readback_offset_s: float | None


_TARGETS = select(
    *(
        select(column).where(stations.c.name == bindparam("station")).scalar_subquery()
        for column in (stations.c.id, stations.c.clock_kind, stations.c.amplitude_limit_ua)
    ),
    *(
        select(column).where(networks.c.id == bindparam("network_id")).scalar_subquery()
        for column in (networks.c.name, networks.c.architecture)
    ),
)
# The station row is locked (PostgreSQL) so two submissions for one station, even from two
# API processes, take turns at the busy check; SQLite's BEGIN IMMEDIATE already serialises them.
_ACTIVE_ON_STATION = (
    select(stations.c.name, experiments.c.id, experiments.c.status)
    .select_from(stations.outerjoin(experiments, and_(
        experiments.c.station_id == stations.c.id, experiments.c.status.in_(ACTIVE_EXPERIMENT_STATUSES)
    )))
    .where(stations.c.id == bindparam("station_id"))
    .order_by(experiments.c.id)
    .limit(1)
    .with_for_update(of=stations)
)  # fmt: skip
_PENDING_READBACK = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.INTERRUPTED)
_NEXT_READBACK = (
    select(jobs.c.payload)
    .where(jobs.c.experiment_id == bindparam("experiment_id"), jobs.c.kind == JobKind.READBACK,
           jobs.c.status.in_(_PENDING_READBACK))
    .order_by(jobs.c.run_at_s)
    .limit(1)
)  # fmt: skip
_JOB_BY_KEY = select(jobs).where(jobs.c.idempotency_key == bindparam("key"))
_EXPERIMENT_BY_ID = EXPERIMENT_WITH_STATION.where(experiments.c.id == bindparam("experiment_id"))


def warm_up(conn: Connection) -> None:
    """Run the submission's lookups once, matching nothing: SQLAlchemy compiles a statement
    on its first execution, which the app pays at start-up instead of its first client."""
    conn.execute(_TARGETS, {"station": "", "network_id": 0}).one()
    conn.execute(_ACTIVE_ON_STATION, {"station_id": 0}).first()
    conn.execute(_JOB_BY_KEY, {"key": ""}).first()
    conn.execute(_EXPERIMENT_BY_ID, {"experiment_id": 0}).first()


def targets(conn: Connection, station: str, network_id: int) -> Targets:
    station_id, clock_kind, limit_ua, network_name, architecture = conn.execute(
        _TARGETS, {"station": station, "network_id": network_id}
    ).one()
    return Targets(
        None if station_id is None else Station(int(station_id), str(clock_kind), float(limit_ua)),
        None if network_name is None else str(network_name),
        None if architecture is None else str(architecture),
    )


def station_holder(conn: Connection, station_id: int) -> StationHolder:
    """The active experiment on the station, locking the station row until the transaction ends."""
    name, experiment_id, status = conn.execute(_ACTIVE_ON_STATION, {"station_id": station_id}).one()
    next_offset_s = None
    if status == ExperimentStatus.READING:
        payload = conn.execute(_NEXT_READBACK, {"experiment_id": experiment_id}).scalar()
        next_offset_s = None if payload is None else float(payload["offset_s"])
    return StationHolder(
        str(name), experiment_id, None if status is None else ExperimentStatus(status), next_offset_s
    )


def holds_busy_station(exc: IntegrityError) -> bool:
    """Whether `exc` is the one-active-experiment-per-station index refusing an insert."""
    constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)  # psycopg
    return constraint == _ONE_ACTIVE_INDEX or _SQLITE_ONE_ACTIVE in str(exc.orig)


def job_by_key(conn: Connection, idempotency_key: str) -> Row[Any] | None:
    return conn.execute(_JOB_BY_KEY, {"key": idempotency_key}).first()


def experiment(conn: Connection, experiment_id: int) -> Row[Any]:
    """The experiment row as stored (server defaults included), with its station's name."""
    found = conn.execute(_EXPERIMENT_BY_ID, {"experiment_id": experiment_id}).first()
    if found is None:
        raise NotFoundError(f"experiment {experiment_id} does not exist")
    return found


def add_with_program_job(
    conn: Connection,
    name: str,
    *,
    network_id: int,
    station_id: int,
    settings: dict[str, Any],
    idempotency_key: str | None,
) -> Row[Any]:
    """The experiment row and its program job, in the caller's transaction; returns the job."""
    experiment_id = records.add_experiment(
        conn, name, network_id=network_id, station_id=station_id, settings=settings
    )
    return queue.enqueue_in(
        conn,
        kind=JobKind.PROGRAM,
        station_id=station_id,
        experiment_id=experiment_id,
        payload={"experiment_id": experiment_id},
        run_at_s=0.0,
        idempotency_key=idempotency_key,
    )  # due at once: run_at_s 0 is before any station clock


_OPEN_JOBS = (JobStatus.QUEUED, JobStatus.INTERRUPTED)


def _stop_jobs(conn: Connection, experiment_id: int) -> None:
    """The experiment's waiting jobs cancelled, a running one asked to stop at its next block."""
    mine = jobs.c.experiment_id == experiment_id
    conn.execute(update(jobs).where(mine, jobs.c.status.in_(_OPEN_JOBS)).values(status=JobStatus.CANCELLED))
    conn.execute(update(jobs).where(mine, jobs.c.status == JobStatus.RUNNING).values(cancel_requested=True))


def _move(conn: Connection, experiment_id: int, status: ExperimentStatus, reason: str | None) -> None:
    change = update(experiments).where(experiments.c.id == experiment_id)
    conn.execute(change.values(status=status, status_reason=reason))


def cancel(conn: Connection, experiment_id: int) -> Row[Any]:
    """Free the station: its jobs stopped (`_stop_jobs`), the experiment `cancelled`;
    returns the experiment row."""
    found = experiment(conn, experiment_id)
    if found.status not in ACTIVE_EXPERIMENT_STATUSES:
        raise ExperimentStateError(f"experiment {experiment_id} is already {found.status}; nothing to cancel")
    _stop_jobs(conn, experiment_id)
    _move(conn, experiment_id, ExperimentStatus.CANCELLED, found.status_reason)
    return experiment(conn, experiment_id)


def _waiting_for_operator(conn: Connection, experiment_id: int, action: str) -> Row[Any]:
    found = experiment(conn, experiment_id)
    if found.status != ExperimentStatus.BOARD_STATE_LOST:
        raise ExperimentStateError(
            f"experiment {experiment_id} is {found.status}; only an experiment whose board lost its "
            f"state ({ExperimentStatus.BOARD_STATE_LOST}) can be {action}"
        )
    return found


def resume(conn: Connection, experiment_id: int) -> Row[Any]:
    """An operator judged the board fit to read on: the experiment reads on from here;
    the readouts taken while it waited stay flagged. Returns the experiment row."""
    found = _waiting_for_operator(conn, experiment_id, "resumed")
    reason = f"resumed by an operator after: {found.status_reason}"
    _move(conn, experiment_id, ExperimentStatus.READING, reason)
    return experiment(conn, experiment_id)


def reprogram(conn: Connection, experiment_id: int) -> Row[Any]:
    """Program the experiment's network again, from scratch, on the board that lost it: the
    old schedule's jobs stop, a new program job is queued (a new programming run with its
    own readbacks follows), and the experiment starts over from `created`. Returns the job."""
    found = _waiting_for_operator(conn, experiment_id, "re-programmed")
    _stop_jobs(conn, experiment_id)
    _move(conn, experiment_id, ExperimentStatus.CREATED, f"re-programming after: {found.status_reason}")
    return queue.enqueue_in(
        conn, kind=JobKind.PROGRAM, station_id=found.station_id, experiment_id=experiment_id,
        payload={"experiment_id": experiment_id}, run_at_s=0.0,
    )  # fmt: skip
