"""What the API and the dashboard read: rows of every table as listed, filtered and paged.

Each function returns table rows (`Row`, columns named as in `hwctl.store.schema`, plus the
few computed ones named here) or a small dataclass; the API turns them into its response
models. A row that does not exist raises `NotFoundError` naming it, which the API answers
with 404. Nothing here returns a per-device vector: those are downloads
(`hwctl.store.readouts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Row, Select, func, select

from hwctl.mapping import DeviceMap
from hwctl.store.errors import NotFoundError
from hwctl.store.scans import scanning
from hwctl.store.schema import (
    device_fits,
    evaluations,
    experiments,
    jobs,
    mappings,
    networks,
    programming_runs,
    readouts,
    stations,
)
from hwctl.vocabulary import CompensationMethod, ExperimentStatus, JobStatus

T = TypeVar("T")


@dataclass(frozen=True)
class Listing(Generic[T]):
    """One page of rows and how many match the filters across all pages."""

    items: list[T]
    total: int


@dataclass(frozen=True)
class Paging:
    limit: int
    offset: int


def _listing(conn: Connection, query: Select[Any], page: Paging) -> Listing[Row[Any]]:
    rows = list(conn.execute(query.limit(page.limit).offset(page.offset)).all())
    counted = select(func.count()).select_from(query.order_by(None).subquery())
    return Listing(rows, int(conn.execute(counted).scalar_one()))


def _one(conn: Connection, query: Select[Any], what: str, row_id: int | str) -> Row[Any]:
    row = conn.execute(query).first()
    if row is None:
        raise NotFoundError(f"{what} {row_id} does not exist")
    return row


# -- stations ---------------------------------------------------------------------------


def list_stations(conn: Connection, page: Paging) -> Listing[Row[Any]]:
    return _listing(conn, select(stations).order_by(stations.c.id), page)


def station_by_name(conn: Connection, name: str) -> Row[Any] | None:
    return conn.execute(select(stations).where(stations.c.name == name)).first()


def get_station(conn: Connection, name: str) -> Row[Any]:
    return _one(conn, select(stations).where(stations.c.name == name), "station", repr(name))


def station_names(conn: Connection, limit: int) -> list[str]:
    """The first `limit` station names in order, for messages that list what exists."""
    return list(conn.execute(select(stations.c.name).order_by(stations.c.name).limit(limit)).scalars())


@dataclass(frozen=True)
class StationQueue:
    """One station's queue: how many jobs wait, the one running (if any), the next one due."""

    station: Row[Any]
    queued: int
    running: Row[Any] | None
    next_due: Row[Any] | None


def station_queues(conn: Connection) -> list[StationQueue]:
    per_station = select(jobs.c.station_id, func.count()).group_by(jobs.c.station_id)
    queued = {int(s): int(n) for s, n in conn.execute(per_station.where(jobs.c.status == JobStatus.QUEUED))}

    def first(station_id: int, status: JobStatus, *order: Any) -> Row[Any] | None:
        query = select(jobs).where(jobs.c.station_id == station_id, jobs.c.status == status)
        return conn.execute(query.order_by(*order).limit(1)).first()

    return [
        StationQueue(
            station=s, queued=queued.get(s.id, 0),
            running=first(s.id, JobStatus.RUNNING, jobs.c.id),
            next_due=first(s.id, JobStatus.QUEUED, jobs.c.run_at_s, jobs.c.priority.desc(), jobs.c.id),
        )
        for s in conn.execute(select(stations).order_by(stations.c.name))
    ]  # fmt: skip


# -- networks ---------------------------------------------------------------------------

# Never the checkpoint itself: its size is enough for a listing.
_NETWORK = (
    networks.c.id, networks.c.name, networks.c.architecture, networks.c.sha256, networks.c.meta,
    networks.c.created_at, func.length(networks.c.checkpoint).label("size_bytes"),
)  # fmt: skip


def list_networks(conn: Connection, page: Paging) -> Listing[Row[Any]]:
    return _listing(conn, select(*_NETWORK).order_by(networks.c.id), page)


def get_network(conn: Connection, network_id: int) -> Row[Any]:
    return _one(conn, select(*_NETWORK).where(networks.c.id == network_id), "network", network_id)


# -- experiments ------------------------------------------------------------------------

# An experiment row with its station's name (`station`).
EXPERIMENT_WITH_STATION: Select[Any] = select(*experiments.c, stations.c.name.label("station")).join(
    stations, stations.c.id == experiments.c.station_id
)


def list_experiments(
    conn: Connection, page: Paging, *, station: str | None = None, status: ExperimentStatus | None = None
) -> Listing[Row[Any]]:
    query = EXPERIMENT_WITH_STATION.order_by(experiments.c.id)
    if station is not None:
        query = query.where(stations.c.name == station)
    if status is not None:
        query = query.where(experiments.c.status == status)
    return _listing(conn, query, page)


def recent_experiments(conn: Connection, limit: int) -> list[Row[Any]]:
    """The newest `limit` experiments, newest first."""
    return list(conn.execute(EXPERIMENT_WITH_STATION.order_by(experiments.c.id.desc()).limit(limit)))


def get_experiment(conn: Connection, experiment_id: int) -> Row[Any]:
    query = EXPERIMENT_WITH_STATION.where(experiments.c.id == experiment_id)
    return _one(conn, query, "experiment", experiment_id)


def job_status_counts(conn: Connection, experiment_id: int) -> dict[JobStatus, int]:
    """How many of the experiment's jobs are in each status (statuses with none are absent)."""
    query = (
        select(jobs.c.status, func.count())
        .where(jobs.c.experiment_id == experiment_id)
        .group_by(jobs.c.status)
    )
    return {JobStatus(status): int(n) for status, n in conn.execute(query)}


# -- jobs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFilter:
    status: JobStatus | None = None
    kind: str | None = None
    station: str | None = None
    experiment_id: int | None = None


def _jobs(filters: JobFilter) -> Select[Any]:
    query = select(jobs).order_by(jobs.c.id)
    if filters.status is not None:
        query = query.where(jobs.c.status == filters.status)
    if filters.kind is not None:
        query = query.where(jobs.c.kind == filters.kind)
    if filters.experiment_id is not None:
        query = query.where(jobs.c.experiment_id == filters.experiment_id)
    if filters.station is not None:
        named = stations.c.name == filters.station
        query = query.join(stations, stations.c.id == jobs.c.station_id).where(named)
    return query


def list_jobs(conn: Connection, page: Paging, filters: JobFilter) -> Listing[Row[Any]]:
    return _listing(conn, _jobs(filters), page)


def experiment_jobs(conn: Connection, experiment_id: int) -> list[Row[Any]]:
    return list(conn.execute(_jobs(JobFilter(experiment_id=experiment_id))))


def get_job(conn: Connection, job_id: int) -> Row[Any]:
    return _one(conn, select(jobs).where(jobs.c.id == job_id), "job", job_id)


# -- readouts ---------------------------------------------------------------------------

# Readout metadata: never the vector, only its length (`n_devices`).
_READOUT = (
    readouts.c.id, readouts.c.run_id, readouts.c.offset_s, readouts.c.scheduled_s, readouts.c.board_time_s,
    readouts.c.read_at, readouts.c.temperature_c, readouts.c.g_len.label("n_devices"), readouts.c.draw,
)  # fmt: skip


def _readouts(experiment_id: int | None = None, run_id: int | None = None) -> Select[Any]:
    query = select(*_READOUT).order_by(readouts.c.run_id, readouts.c.offset_s, readouts.c.draw)
    if run_id is not None:
        query = query.where(readouts.c.run_id == run_id)
    if experiment_id is not None:
        query = query.join(programming_runs, programming_runs.c.id == readouts.c.run_id).where(
            programming_runs.c.experiment_id == experiment_id
        )
    return query


def list_readouts(
    conn: Connection, page: Paging, *, experiment_id: int | None = None, run_id: int | None = None
) -> Listing[Row[Any]]:
    """Readouts oldest offset first, optionally of one experiment or run."""
    return _listing(conn, _readouts(experiment_id, run_id), page)


def experiment_readouts(conn: Connection, experiment_id: int) -> list[Row[Any]]:
    return list(conn.execute(_readouts(experiment_id=experiment_id)))


def get_readout(conn: Connection, readout_id: int) -> Row[Any]:
    return _one(conn, select(*_READOUT).where(readouts.c.id == readout_id), "readout", readout_id)


def run_addresses(conn: Connection, run_id: int) -> npt.NDArray[np.uint32]:
    """The chip address of each device of a programming run, in canonical device order."""
    query = (
        select(mappings.c.device_map)
        .join(programming_runs, programming_runs.c.mapping_id == mappings.c.id)
        .where(programming_runs.c.id == run_id)
    )
    blob = _one(conn, query, "programming run", run_id).device_map
    return DeviceMap.from_bytes(blob).addresses.astype(np.uint32, copy=False)


# -- evaluations ------------------------------------------------------------------------


def _evaluations(experiment_id: int | None = None, method: CompensationMethod | None = None) -> Select[Any]:
    """Evaluations with their readout's offset, in time order, optionally of one experiment."""
    query = (
        select(evaluations, readouts.c.offset_s)
        .join(readouts, readouts.c.id == evaluations.c.readout_id)
        .order_by(readouts.c.offset_s, evaluations.c.method, evaluations.c.id)
    )
    if experiment_id is not None:
        query = query.join(programming_runs, programming_runs.c.id == readouts.c.run_id).where(
            programming_runs.c.experiment_id == experiment_id
        )
    if method is not None:
        query = query.where(evaluations.c.method == method)
    return query


def list_evaluations(
    conn: Connection,
    page: Paging,
    *,
    experiment_id: int | None = None,
    method: CompensationMethod | None = None,
) -> Listing[Row[Any]]:
    return _listing(conn, _evaluations(experiment_id, method), page)


def experiment_evaluations(conn: Connection, experiment_id: int) -> list[Row[Any]]:
    return list(conn.execute(_evaluations(experiment_id)))


def experiment_accuracy_reads(conn: Connection, experiment_id: int) -> list[Row[Any]]:
    """Every evaluation of every finished programming run of the experiment with its
    readout's run, offset, draw and read times (`block_starts`, `board_time_s`,
    `scheduled_s`, `g_len`), oldest first: what the accuracy's spread is computed from."""
    read = (
        readouts.c.run_id, readouts.c.offset_s, readouts.c.draw, readouts.c.scheduled_s,
        readouts.c.board_time_s, readouts.c.block_starts, readouts.c.g_len,
    )  # fmt: skip
    query = (
        select(evaluations, *read)
        .join(readouts, readouts.c.id == evaluations.c.readout_id)
        .join(programming_runs, programming_runs.c.id == readouts.c.run_id)
        .where(programming_runs.c.experiment_id == experiment_id, programming_runs.c.ended_at.is_not(None))
        .order_by(evaluations.c.id)
    )
    return list(conn.execute(query))


def get_evaluation(conn: Connection, evaluation_id: int) -> Row[Any]:
    query = _evaluations().where(evaluations.c.id == evaluation_id)
    return _one(conn, query, "evaluation", evaluation_id)


# -- drift fits -------------------------------------------------------------------------

# Never the vectors: a fit's blobs are megabytes.
_FIT = (
    device_fits.c.id, device_fits.c.run_id, device_fits.c.nu_len.label("n_devices"),
    device_fits.c.summary, device_fits.c.statistics, device_fits.c.created_at,
)  # fmt: skip


def list_fits(
    conn: Connection, page: Paging, *, experiment_id: int | None = None, run_id: int | None = None
) -> Listing[Row[Any]]:
    query = select(*_FIT).order_by(device_fits.c.id)
    if run_id is not None:
        query = query.where(device_fits.c.run_id == run_id)
    if experiment_id is not None:
        query = query.join(programming_runs, programming_runs.c.id == device_fits.c.run_id).where(
            programming_runs.c.experiment_id == experiment_id
        )
    with scanning(conn):  # the columns sit behind the vectors' pages (`run_parts.latest_fit_header`)
        return _listing(conn, query, page)


def get_fit(conn: Connection, fit_id: int) -> Row[Any]:
    """A fit's summary and statistics (`statistics` is NULL for fits stored before that column)."""
    with scanning(conn):
        return _one(conn, select(*_FIT).where(device_fits.c.id == fit_id), "drift fit", fit_id)


def fit_bins(conn: Connection, fit_id: int) -> Sequence[dict[str, Any]]:
    """Per target-conductance bin statistics; older fits carried them in the summary."""
    fit = get_fit(conn, fit_id)
    bins = fit.statistics["bins"] if fit.statistics is not None else fit.summary.get("bins", [])
    return list(bins)
