"""Experiments: submit a network for a station (202 + its program job), follow it to results."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Response
from sqlalchemy import Engine, Row, func, select

from api.deps import Db, EngineDep, ReadAccess, WriteAccess, WritesDep
from api.lookup import count, one_or_404
from api.pagination import Page, Paging
from api.params import MAX_ROW_ID, PathId
from api.problems import problem_responses
from api.routers.evaluations import evaluation_out, evaluations_query
from api.routers.jobs import TERMINAL_STATUSES, load_job
from api.routers.readouts import readout_out, readouts_query
from api.schemas.experiments import Experiment, ExperimentAccepted, ExperimentDetail, ExperimentProgress
from hwctl import queue
from hwctl.experiment_spec import JOB_PROGRAM, ExperimentSpec
from hwctl.store import records
from hwctl.store.schema import experiments, jobs, networks, stations

router = APIRouter(prefix="/experiments", tags=["experiments"])

_COLUMNS = (*experiments.c, stations.c.name.label("station"))


def _select() -> Any:
    return select(*_COLUMNS).join(stations, stations.c.id == experiments.c.station_id)


def experiment_out(row: Row) -> Experiment:
    return Experiment(
        id=row.id, name=row.name, network_id=row.network_id, station=row.station, status=row.status,
        spec=ExperimentSpec.model_validate(row.settings), created_at=row.created_at,
    )


def _station_id(db: Db, name: str) -> int:
    station_id = db.execute(select(stations.c.id).where(stations.c.name == name)).scalar()
    if station_id is None:
        known = db.execute(select(stations.c.name).order_by(stations.c.name).limit(20)).scalars().all()
        raise HTTPException(
            422, f"unknown station {name!r}; known stations: {', '.join(known) or 'none (POST /stations)'}"
        )
    return int(station_id)


def _network_name(db: Db, network_id: int) -> str:
    name = None
    if 1 <= network_id <= MAX_ROW_ID:  # beyond it no row can exist, and the driver would overflow
        name = db.execute(select(networks.c.name).where(networks.c.id == network_id)).scalar()
    if name is None:
        raise HTTPException(422, f"network {network_id} does not exist; upload it with POST /networks")
    return str(name)


def _accepted(engine: Engine, job_id: int, response: Response) -> ExperimentAccepted:
    """Read back on a plain connection: no write lock needed to answer."""
    with engine.connect() as db:
        job = load_job(db, job_id)
        assert job.experiment_id is not None
        row = db.execute(_select().where(experiments.c.id == job.experiment_id)).one()
    response.headers["Location"] = f"/experiments/{row.id}"
    return ExperimentAccepted(experiment=experiment_out(row), program_job=job)


@router.post(
    "", status_code=202, response_model=ExperimentAccepted, dependencies=[WriteAccess],
    responses=problem_responses(401, 403, 422),
)
def submit_experiment(
    spec: ExperimentSpec,
    engine: EngineDep,
    writes: WritesDep,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(max_length=128, description="resubmitting with it returns the same experiment")
    ] = None,
) -> ExperimentAccepted:
    """Store the experiment and enqueue its program job; the station worker does the rest.

    One connection at a time (never one held while the queue takes another), so a busy
    server cannot exhaust its pool with half-done submissions.
    """
    with writes.serialized:  # both transactions in one turn: no other writer in between
        with writes.transaction() as db:
            existing = None
            if idempotency_key is not None:
                by_key = select(jobs.c.id).where(jobs.c.idempotency_key == idempotency_key)
                existing = db.execute(by_key).scalar()
            if existing is None:
                station_id = _station_id(db, spec.station)
                network_name = _network_name(db, spec.network_id)  # checked even when a name is given
                experiment_id = records.add_experiment(
                    db, spec.name or f"{network_name} on {spec.station}", network_id=spec.network_id,
                    station_id=station_id, settings=spec.model_dump(mode="json"),
                )
        if existing is not None:
            return _accepted(engine, int(existing), response)
        job_id = queue.enqueue(
            engine, kind=JOB_PROGRAM, station_id=station_id, experiment_id=experiment_id,
            payload={"experiment_id": experiment_id}, run_at_s=0.0, idempotency_key=idempotency_key,
        )  # due at once: run_at_s 0 is before any station clock
    return _accepted(engine, job_id, response)


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
