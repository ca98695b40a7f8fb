"""The operator's dashboard: read-only HTML pages over the rows the REST API serves.

Server-rendered from autoescaped Jinja2 templates (api/templates/), with no front-end
build step: live job progress comes from the jobs SSE endpoint through a few lines of
inline JavaScript. It reads through the same queries as the JSON routers, so a page
never shows a number the API would not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy import Connection

from api.deps import Db, ReadAccess
from api.params import PathId
from api.schemas.experiments import Experiment
from api.schemas.jobs import Job
from api.schemas.stations import Station
from api.views import experiment_detail, experiment_out, job_out, station_out
from hwctl.analysis.spread import AccuracyRecord, draws_text, programmings_text
from hwctl.analysis.stored import measured_accuracy
from hwctl.report import PLOT_NAMES  # what /experiments/{id}/plots/ serves
from hwctl.store import queries
from hwctl.vocabulary import GDC_STATISTIC_LABELS, METHOD_LABELS, JobStatus

router = APIRouter(include_in_schema=False, dependencies=[ReadAccess])

RECENT_EXPERIMENTS = 100
AUTO_REFRESH_S = 30  # while jobs are pending, so queues and tables follow without SSE


def duration(seconds: float) -> str:
    """A station-clock span for people: 25 s, 4.2 min, 3.1 h, 1.0 d."""
    for unit, size in (("d", 86_400.0), ("h", 3_600.0), ("min", 60.0)):
        if abs(seconds) >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True, undefined=StrictUndefined
)
_templates.filters["duration"] = duration
_templates.filters["draws_spread"] = draws_text
_templates.filters["programmings_spread"] = programmings_text


@dataclass(frozen=True)
class StationQueue:
    """One station's queue as the overview shows it."""

    name: str
    resource: str
    clock_kind: str
    link: str  # up, down or paused since when (attempts), or unknown
    queued: int
    running: Job | None
    next_due: Job | None


@dataclass
class AccuracyRow:
    """The accuracy at one scheduled time by compensation method: the mean over read draws
    and programmings, with its spreads (`hwctl.analysis.spread`)."""

    offset_s: float
    by_method: dict[str, AccuracyRecord] = field(default_factory=dict)


def accuracy_rows(records: list[AccuracyRecord]) -> list[AccuracyRow]:
    """Pivot to one row per scheduled offset, oldest first."""
    rows: dict[float, AccuracyRow] = {}
    for record in records:
        rows.setdefault(record.point, AccuracyRow(record.point)).by_method[record.method] = record
    return sorted(rows.values(), key=lambda row: row.offset_s)


def _render(request: Request, template: str, **context: Any) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    html = _templates.get_template(template).render(
        root=root, methods=METHOD_LABELS, gdc_statistics=GDC_STATISTIC_LABELS, **context
    )
    return HTMLResponse(html)


def link_label(station: Station) -> str:
    """The board's link for people: up, down since 04:50:12 UTC (3 attempts), paused
    (down so long that the queue waits), or unknown."""
    link = station.link
    if link.state in ("down", "paused") and link.down_since is not None:
        queue = ", queue paused" if link.state == "paused" else ""
        return f"{link.state} since {link.down_since:%Y-%m-%d %H:%M:%S} UTC ({link.attempts} attempts{queue})"
    return link.state or "unknown"


def _job(row: Any) -> Job | None:
    return None if row is None else job_out(row)


def station_queues(db: Connection) -> list[StationQueue]:
    return [
        StationQueue(
            name=q.station.name, resource=q.station.resource, clock_kind=q.station.clock_kind,
            link=link_label(station_out(q.station)), queued=q.queued, running=_job(q.running),
            next_due=_job(q.next_due),
        )
        for q in queries.station_queues(db)
    ]  # fmt: skip


def recent_experiments(db: Connection) -> list[Experiment]:
    return [experiment_out(row) for row in queries.recent_experiments(db, RECENT_EXPERIMENTS)]


_ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
_TROUBLED = (JobStatus.FAILED, JobStatus.MISSED, JobStatus.INTERRUPTED)


@router.get("/", response_class=HTMLResponse)
@router.get("/dashboard", response_class=HTMLResponse)
def dashboard_overview(request: Request, db: Db) -> HTMLResponse:
    """Stations with their queues, the jobs running now, and the experiments."""
    queues = station_queues(db)
    running = [q.running for q in queues if q.running is not None]
    return _render(
        request, "overview.html", queues=queues, running=running, experiments=recent_experiments(db),
        refresh_s=AUTO_REFRESH_S if any(q.queued or q.running for q in queues) else None,
    )  # fmt: skip


@router.get("/dashboard/experiments/{experiment_id}", response_class=HTMLResponse)
def dashboard_experiment(experiment_id: PathId, request: Request, db: Db) -> HTMLResponse:
    """One experiment: progress, its pending and failed jobs, accuracy vs time and the plots."""
    detail = experiment_detail(db, experiment_id)
    experiment_jobs = [job_out(r) for r in queries.experiment_jobs(db, experiment_id)]
    methods = [m for m in detail.spec.evaluation.methods if m in METHOD_LABELS]
    return _render(
        request, "experiment.html", experiment=detail,
        accuracy=accuracy_rows(measured_accuracy(db, experiment_id)), shown_methods=methods,
        active=[j for j in experiment_jobs if j.status in _ACTIVE],
        troubled=[j for j in experiment_jobs if j.status in _TROUBLED],
        plots=PLOT_NAMES,
        refresh_s=AUTO_REFRESH_S if any(j.status in _ACTIVE for j in experiment_jobs) else None,
    )  # fmt: skip
