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
from sqlalchemy import Connection, func, select

from api.deps import Db, ReadAccess
from api.routers.experiments import experiment_out, get_experiment
from api.routers.jobs import job_out, jobs_query
from api.schemas.experiments import Experiment
from api.schemas.jobs import Job, JobStatus
from api.schemas.results import Evaluation
from hwctl.report import METHOD_LABELS, PLOT_NAMES  # PLOT_NAMES: what /experiments/{id}/plots/ serves
from hwctl.store.schema import experiments, jobs, stations

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


@dataclass(frozen=True)
class StationQueue:
    """One station's queue as the overview shows it."""

    name: str
    resource: str
    clock_kind: str
    queued: int
    running: Job | None
    next_due: Job | None


@dataclass
class AccuracyRow:
    """The evaluations of one readout time, by compensation method."""

    offset_s: float
    by_method: dict[str, Evaluation] = field(default_factory=dict)


def accuracy_rows(evaluations: list[Evaluation]) -> list[AccuracyRow]:
    """Pivot to one row per readout offset; a re-evaluation replaces the older result."""
    rows: dict[float, AccuracyRow] = {}
    for evaluation in sorted(evaluations, key=lambda e: (e.offset_s, e.id)):
        rows.setdefault(evaluation.offset_s, AccuracyRow(evaluation.offset_s)).by_method[
            evaluation.method
        ] = evaluation
    return list(rows.values())


def _render(request: Request, template: str, **context: Any) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    html = _templates.get_template(template).render(root=root, methods=METHOD_LABELS, **context)
    return HTMLResponse(html)


def _first_job(db: Connection, station: str, status: JobStatus, order: Any) -> Job | None:
    row = db.execute(jobs_query(status, station=station).order_by(None).order_by(*order).limit(1)).first()
    return None if row is None else job_out(row)


def station_queues(db: Connection) -> list[StationQueue]:
    per_station = select(jobs.c.station_id, func.count()).group_by(jobs.c.station_id)
    queued: dict[int, int] = dict(db.execute(per_station.where(jobs.c.status == "queued")).all())
    return [
        StationQueue(
            name=s.name, resource=s.resource, clock_kind=s.clock_kind, queued=int(queued.get(s.id, 0)),
            running=_first_job(db, s.name, "running", [jobs.c.id]),
            next_due=_first_job(db, s.name, "queued", [jobs.c.run_at_s, jobs.c.priority.desc(), jobs.c.id]),
        )
        for s in db.execute(select(stations).order_by(stations.c.name))
    ]


def recent_experiments(db: Connection) -> list[Experiment]:
    query = (
        select(*experiments.c, stations.c.name.label("station"))
        .join(stations, stations.c.id == experiments.c.station_id)
        .order_by(experiments.c.id.desc())
        .limit(RECENT_EXPERIMENTS)
    )
    return [experiment_out(row) for row in db.execute(query)]


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
def dashboard_experiment(experiment_id: int, request: Request, db: Db) -> HTMLResponse:
    """One experiment: progress, its pending and failed jobs, accuracy vs time and the plots."""
    detail = get_experiment(experiment_id, db)
    experiment_jobs = [job_out(r) for r in db.execute(jobs_query(experiment_id=experiment_id))]
    methods = [m for m in detail.spec.evaluation.methods if m in METHOD_LABELS]
    return _render(
        request, "experiment.html", experiment=detail, accuracy=accuracy_rows(detail.evaluations),
        shown_methods=methods,
        active=[j for j in experiment_jobs if j.status in ("queued", "running")],
        troubled=[j for j in experiment_jobs if j.status in ("failed", "missed", "interrupted")],
        plots=PLOT_NAMES,
        refresh_s=AUTO_REFRESH_S if any(j.status in ("queued", "running") for j in experiment_jobs) else None,
    )  # fmt: skip
