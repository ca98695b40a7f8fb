"""Experiments: submit a network for a station (202 + its program job), follow it to results."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Response
from sqlalchemy import Connection, Engine, Row, and_, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api.deps import Db, EngineDep, ReadAccess, WriteAccess, WritesDep
from api.lookup import count, one_or_404
from api.pagination import Page, Paging
from api.params import PathId
from api.problems import problem_responses
from api.routers.evaluations import evaluation_out, evaluations_query
from api.routers.jobs import TERMINAL_STATUSES, job_out
from api.routers.readouts import readout_out, readouts_query
from api.schemas.experiments import Experiment, ExperimentAccepted, ExperimentDetail, ExperimentProgress
from hwctl import queue
from hwctl.experiment_spec import (
    DATASET_IMAGE_SHAPES,
    JOB_PROGRAM,
    JOB_READBACK,
    DatasetName,
    ExperimentRequest,
    ExperimentSpec,
)
from hwctl.nn.models import UnknownModelError, model_spec
from hwctl.schedule import duration_label
from hwctl.store import records
from hwctl.store.schema import EXPERIMENT_ACTIVE_STATUSES, experiments, jobs, networks, stations

router = APIRouter(prefix="/experiments", tags=["experiments"])

# The store's guard: at most one active experiment per station. PostgreSQL names the index
# in the error; SQLite names the indexed column, the only unique one on experiments.station_id.
_ONE_ACTIVE_INDEX = "uq_experiments_one_active_per_station"
_SQLITE_ONE_ACTIVE = "UNIQUE constraint failed: experiments.station_id"

_COLUMNS = (*experiments.c, stations.c.name.label("station"))


def _select() -> Any:
    return select(*_COLUMNS).join(stations, stations.c.id == experiments.c.station_id)


def experiment_out(row: Row) -> Experiment:
    return Experiment(
        id=row.id, name=row.name, network_id=row.network_id, station=row.station, status=row.status,
        spec=ExperimentSpec.model_validate(row.settings), created_at=row.created_at,
    )


# Built once, run by every submission (a statement built per call costs as much as running it).
_TARGETS = select(
    select(stations.c.id).where(stations.c.name == bindparam("station")).scalar_subquery(),
    select(networks.c.name).where(networks.c.id == bindparam("network_id")).scalar_subquery(),
    select(networks.c.architecture).where(networks.c.id == bindparam("network_id")).scalar_subquery(),
)
# The station row is locked (PostgreSQL) so two submissions for one station, even from two
# API processes, take turns at the busy check; SQLite's BEGIN IMMEDIATE already serialises them.
_ACTIVE_ON_STATION = (
    select(stations.c.name, experiments.c.id, experiments.c.status)
    .select_from(stations.outerjoin(experiments, and_(
        experiments.c.station_id == stations.c.id, experiments.c.status.in_(EXPERIMENT_ACTIVE_STATUSES)
    )))
    .where(stations.c.id == bindparam("station_id"))
    .order_by(experiments.c.id)
    .limit(1)
    .with_for_update(of=stations)
)
_NEXT_READBACK = (
    select(jobs.c.payload)
    .where(jobs.c.experiment_id == bindparam("experiment_id"), jobs.c.kind == JOB_READBACK,
           jobs.c.status.in_(("queued", "running", "interrupted")))
    .order_by(jobs.c.run_at_s)
    .limit(1)
)  # fmt: skip
_JOB_BY_KEY = select(jobs).where(jobs.c.idempotency_key == bindparam("key"))
_EXPERIMENT_BY_ID = _select().where(experiments.c.id == bindparam("experiment_id"))


def warm_up(db: Connection) -> None:
    """Run the submission's lookups once, matching nothing: SQLAlchemy compiles a statement
    on its first execution, which the app pays at start-up instead of its first client."""
    db.execute(_TARGETS, {"station": "", "network_id": 0}).one()
    db.execute(_ACTIVE_ON_STATION, {"station_id": 0}).first()
    db.execute(_JOB_BY_KEY, {"key": ""}).first()
    db.execute(_EXPERIMENT_BY_ID, {"experiment_id": 0}).first()


def _targets(db: Connection, spec: ExperimentRequest) -> tuple[int, str, str]:
    """The station's id, the network's name and architecture, in one round trip; 422 if unknown."""
    station_id, network_name, architecture = db.execute(
        _TARGETS, {"station": spec.station, "network_id": spec.network_id}
    ).one()
    if station_id is None:
        known = db.execute(select(stations.c.name).order_by(stations.c.name).limit(20)).scalars().all()
        raise HTTPException(
            422, f"unknown station {spec.station!r}; known stations: "
            f"{', '.join(known) or 'none (POST /stations)'}",
        )
    if network_name is None:
        raise HTTPException(422, f"network {spec.network_id} does not exist; upload it with POST /networks")
    return int(station_id), str(network_name), str(architecture)


def _dataset(spec: ExperimentRequest, architecture: str) -> DatasetName:
    """The requested test set, or the architecture's own; 422 if it does not fit the network."""
    requested = spec.evaluation.dataset
    try:
        own: DatasetName = model_spec(architecture).dataset  # type: ignore[assignment]
    except UnknownModelError:
        if requested is None and spec.evaluation.enabled:
            raise HTTPException(
                422, f"network {spec.network_id} is a {architecture!r}, which has no default data set; "
                "give evaluation.dataset",
            ) from None
        return requested or "digits"  # not evaluated: nothing reads it
    if requested is not None and DATASET_IMAGE_SHAPES[requested] != DATASET_IMAGE_SHAPES[own]:
        raise HTTPException(
            422, f"evaluation.dataset {requested!r} ({_shape(requested)} images) does not fit network "
            f"{spec.network_id}, a {architecture} that takes {_shape(own)} {own} images; "
            f"omit evaluation.dataset to use {own!r}",
        )
    return requested or own


def _shape(dataset: str) -> str:
    return "×".join(str(n) for n in DATASET_IMAGE_SHAPES[dataset])


def _refuse_if_busy(db: Connection, station_id: int) -> None:
    """409 while another experiment holds the station's devices (see EXPERIMENT_ACTIVE_STATUSES)."""
    station, experiment_id, status = db.execute(_ACTIVE_ON_STATION, {"station_id": station_id}).one()
    if experiment_id is None:
        return
    detail = status
    if status == "reading":
        payload = db.execute(_NEXT_READBACK, {"experiment_id": experiment_id}).scalar()
        if payload is not None:
            detail += f", next readback at {duration_label(float(payload['offset_s']))} after programming"
    raise HTTPException(
        409, f"station {station!r} is busy with experiment {experiment_id} ({detail}); wait for it to "
        f"finish or cancel it (POST /experiments/{experiment_id}/cancel)",
    )


def _with_experiment(db: Connection, job: Row) -> tuple[Row, Row]:
    """The job's experiment as stored (server defaults included), and the job."""
    return db.execute(_EXPERIMENT_BY_ID, {"experiment_id": job.experiment_id}).one(), job


def _store_submission(db: Connection, request: ExperimentRequest, idempotency_key: str | None) -> Row:
    """The experiment row (its spec resolved) and its program job; returns the job as stored."""
    station_id, network_name, architecture = _targets(db, request)  # checked even when a name is given
    spec = request.resolved(_dataset(request, architecture))
    _refuse_if_busy(db, station_id)
    experiment_id = records.add_experiment(
        db, spec.name or f"{network_name} on {spec.station}", network_id=spec.network_id,
        station_id=station_id, settings=spec.model_dump(mode="json"),
    )
    return queue.enqueue_in(
        db, kind=JOB_PROGRAM, station_id=station_id, experiment_id=experiment_id,
        payload={"experiment_id": experiment_id}, run_at_s=0.0, idempotency_key=idempotency_key,
    )  # due at once: run_at_s 0 is before any station clock


@router.post(
    "", status_code=202, response_model=ExperimentAccepted, dependencies=[WriteAccess],
    responses=problem_responses(401, 403, 409, 422),
)
async def submit_experiment(
    spec: ExperimentRequest,
    engine: EngineDep,
    writes: WritesDep,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(max_length=128, description="resubmitting with it returns the same experiment")
    ] = None,
) -> ExperimentAccepted:
    """Store the experiment and enqueue its program job in one transaction, which
    concurrent submissions share (api.group_commit); answered once it is committed.

    A station runs one experiment at a time: 409 while another on it is not finished or
    cancelled (checked in the same transaction, so two racing submissions cannot both pass).
    A missing `evaluation.dataset` is the network architecture's own, stored resolved.

    A resubmitted `Idempotency-Key` finds its job. Two racing from two API processes collide
    on a unique index (the key's, or one active experiment per station); the loser's savepoint
    leaves nothing behind and it answers with the winner's job, or the station's 409.
    """

    def store(db: Connection) -> tuple[Row, Row]:
        job = None if idempotency_key is None else db.execute(_JOB_BY_KEY, {"key": idempotency_key}).first()
        if job is None:
            job = _store_submission(db, spec, idempotency_key)
        return _with_experiment(db, job)

    try:
        experiment, job = await asyncio.wrap_future(writes.group.submit(store))
    except IntegrityError as exc:
        experiment, job = await run_in_threadpool(
            _after_collision, engine, exc, spec.station, idempotency_key
        )
    response.headers["Location"] = f"/experiments/{experiment.id}"
    return ExperimentAccepted(experiment=experiment_out(experiment), program_job=job_out(job))


def _takes_busy_station(exc: IntegrityError) -> bool:
    constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)  # psycopg
    return constraint == _ONE_ACTIVE_INDEX or _SQLITE_ONE_ACTIVE in str(exc.orig)


def _after_collision(
    engine: Engine, exc: IntegrityError, station: str, idempotency_key: str | None
) -> tuple[Row, Row]:
    """A unique index caught a submission the checks passed (a racing API process):
    the key's winner if there is one, else the busy station's 409."""
    with engine.connect() as db:
        job = None if idempotency_key is None else db.execute(_JOB_BY_KEY, {"key": idempotency_key}).first()
        if job is not None:
            return _with_experiment(db, job)
        if _takes_busy_station(exc):
            station_id = db.execute(select(stations.c.id).where(stations.c.name == station)).scalar_one()
            _refuse_if_busy(db, station_id)  # the 409 naming the experiment that holds it
            raise HTTPException(409, f"station {station!r} was busy with another submission; retry")
        if idempotency_key is not None:
            raise HTTPException(409, "a concurrent submission with this Idempotency-Key failed; retry")
    raise exc


@router.get("", response_model=Page[Experiment], dependencies=[ReadAccess])
def list_experiments(
    db: Db, page: Paging, station: str | None = None, status: str | None = None
) -> Page[Experiment]:
    query = _select().order_by(experiments.c.id)
    if station is not None:
        query = query.where(stations.c.name == station)
    if status is not None:
        query = query.where(experiments.c.status == status)
    rows = db.execute(query.limit(page.limit).offset(page.offset)).all()
    return Page(items=[experiment_out(r) for r in rows], total=count(db, query), limit=page.limit,
                offset=page.offset)


@router.get(
    "/{experiment_id}", response_model=ExperimentDetail, dependencies=[ReadAccess],
    responses=problem_responses(404),
)
def get_experiment(experiment_id: PathId, db: Db) -> ExperimentDetail:
    """The experiment with its progress and every result so far (readouts, accuracies per method)."""
    one_or_404(db, experiments, experiment_id, "experiment")
    experiment = experiment_out(db.execute(_select().where(experiments.c.id == experiment_id)).one())
    statuses = db.execute(
        select(jobs.c.status, func.count())
        .where(jobs.c.experiment_id == experiment_id)
        .group_by(jobs.c.status)
    ).all()
    readout_rows = [readout_out(r) for r in db.execute(readouts_query(experiment_id=experiment_id))]
    evaluation_rows = [evaluation_out(r) for r in db.execute(evaluations_query(experiment_id=experiment_id))]
    progress = ExperimentProgress(
        jobs_total=sum(n for _, n in statuses),
        jobs_done=sum(n for s, n in statuses if s in TERMINAL_STATUSES),
        readouts_done=len(readout_rows),
        readouts_planned=len(experiment.spec.schedule.offsets_s),
        evaluations_done=len(evaluation_rows),
    )
    return ExperimentDetail(
        **experiment.model_dump(), progress=progress, readouts=readout_rows, evaluations=evaluation_rows
    )


_OPEN_JOBS = ("queued", "interrupted")


@router.post(
    "/{experiment_id}/cancel", response_model=Experiment, dependencies=[WriteAccess],
    responses=problem_responses(401, 403, 404, 409),
)
async def cancel_experiment(experiment_id: PathId, writes: WritesDep) -> Experiment:
    """Free the station: the experiment's waiting jobs are cancelled, a running one is asked to
    stop at its next block, and the experiment is `cancelled` at once."""

    def cancel(db: Connection) -> Row:
        experiment = db.execute(_EXPERIMENT_BY_ID, {"experiment_id": experiment_id}).first()
        if experiment is None:
            raise HTTPException(404, f"experiment {experiment_id} does not exist")
        if experiment.status not in EXPERIMENT_ACTIVE_STATUSES:
            raise HTTPException(
                409, f"experiment {experiment_id} is already {experiment.status}; nothing to cancel"
            )
        mine = jobs.c.experiment_id == experiment_id
        db.execute(update(jobs).where(mine, jobs.c.status.in_(_OPEN_JOBS)).values(status="cancelled"))
        db.execute(update(jobs).where(mine, jobs.c.status == "running").values(cancel_requested=True))
        db.execute(update(experiments).where(experiments.c.id == experiment_id).values(status="cancelled"))
        return db.execute(_EXPERIMENT_BY_ID, {"experiment_id": experiment_id}).one()

    return experiment_out(await asyncio.wrap_future(writes.group.submit(cancel)))
