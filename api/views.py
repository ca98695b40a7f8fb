"""Store rows as the API's response models: one conversion per model, shared by the JSON
routers and the dashboard, so a page never shows a number the API would not."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, Row

from api.pagination import Page, PageParams
from api.schemas.experiments import Experiment, ExperimentDetail, ExperimentProgress
from api.schemas.jobs import Job
from api.schemas.networks import Network
from api.schemas.results import DriftFitSummary, Evaluation, OutlierDevices, Readout
from api.schemas.stations import Station, StationCreate, StationLink
from hwctl.experiment_spec import ExperimentSpec
from hwctl.store import queries
from hwctl.vocabulary import OUTLIERS_LISTED, TERMINAL_JOB_STATUSES

M = TypeVar("M")


def paging(page: PageParams) -> queries.Paging:
    return queries.Paging(page.limit, page.offset)


def page_of(listing: queries.Listing[Row[Any]], page: PageParams, out: Callable[[Row[Any]], M]) -> Page[M]:
    items = [out(r) for r in listing.items]
    return Page(items=items, total=listing.total, limit=page.limit, offset=page.offset)


def station_out(row: Row[Any]) -> Station:
    stored: dict[str, Any] = {
        "name": row.name, "resource": row.resource, "chip_serial": row.chip_serial,
        "geometry": {"tiles": row.tiles, "rows": row.rows, "cols": row.cols},
        "amplitude_limit_ua": row.amplitude_limit_ua, "clock_kind": row.clock_kind,
    }  # fmt: skip
    link = StationLink(
        state=row.link_state, down_since=row.link_down_since, attempts=row.link_attempts,
        worker_heartbeat_at=row.worker_heartbeat_at,
    )  # fmt: skip
    finite_limit_ua = row.amplitude_limit_ua if math.isfinite(row.amplitude_limit_ua) else None
    return Station.model_validate(
        stored | {"amplitude_limit_ua": finite_limit_ua, "id": row.id, "created_at": row.created_at,
                  "link": link, "refused": _refused(StationCreate, stored)}
    )  # fmt: skip


def _refused(model: type[BaseModel], stored: dict[str, Any]) -> list[str]:
    """What of a stored row `model` would refuse today, one line per field."""
    try:
        model.model_validate(stored)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']} (stored {e['input']!r})" for e in exc.errors()]
    return []


def network_out(row: Row[Any]) -> Network:
    return Network(
        id=row.id, name=row.name, architecture=row.architecture, sha256=row.sha256,
        size_bytes=row.size_bytes, metadata=row.meta, created_at=row.created_at,
    )  # fmt: skip


def experiment_out(row: Row[Any]) -> Experiment:
    return Experiment(
        id=row.id, name=row.name, network_id=row.network_id, station=row.station, status=row.status,
        status_reason=row.status_reason, spec=ExperimentSpec.model_validate(row.settings),
        created_at=row.created_at,
    )  # fmt: skip


def job_out(row: Row[Any]) -> Job:
    return Job.model_validate(row, from_attributes=True)


def readout_out(row: Row[Any]) -> Readout:
    return Readout.model_validate(row, from_attributes=True)


def evaluation_out(row: Row[Any]) -> Evaluation:
    from_settings = {key: row.settings.get(key) for key in ("gdc_statistic", "t0_reads")}
    return Evaluation.model_validate({**row._asdict(), **from_settings})


def fit_out(row: Row[Any]) -> DriftFitSummary:
    outliers = None
    if row.statistics is not None:
        outliers = {
            kind: OutlierDevices(count=len(devices), first=devices[:OUTLIERS_LISTED])
            for kind, devices in row.statistics["outliers"].items()
        }
    return DriftFitSummary(
        id=row.id, run_id=row.run_id, n_devices=row.n_devices, summary=row.summary, outliers=outliers,
        created_at=row.created_at,
    )


def experiment_detail(db: Connection, experiment_id: int) -> ExperimentDetail:
    """The experiment with its progress and every result so far (readouts, accuracies per method)."""
    experiment = experiment_out(queries.get_experiment(db, experiment_id))
    statuses = queries.job_status_counts(db, experiment_id)
    readouts = [readout_out(r) for r in queries.experiment_readouts(db, experiment_id)]
    evaluations = [evaluation_out(r) for r in queries.experiment_evaluations(db, experiment_id)]
    progress = ExperimentProgress(
        jobs_total=sum(statuses.values()),
        jobs_done=sum(n for s, n in statuses.items() if s in TERMINAL_JOB_STATUSES),
        readouts_done=len(readouts),
        readouts_planned=len(experiment.spec.schedule.offsets_s) * experiment.spec.schedule.reads_per_point,
        evaluations_done=len(evaluations),
    )
    return ExperimentDetail(
        **experiment.model_dump(), progress=progress, readouts=readouts, evaluations=evaluations
    )
