"""Experiments: submit a network for a station (202 + its program job), follow it to results."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Response
from sqlalchemy import Connection, Engine, Row, bindparam, func, select
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


# Built once, run by every submission (a statement built per call costs as much as running it).
_TARGETS = select(
    select(stations.c.id).where(stations.c.name == bindparam("station")).scalar_subquery(),
    select(networks.c.name).where(networks.c.id == bindparam("network_id")).scalar_subquery(),
)
_JOB_BY_KEY = select(jobs).where(jobs.c.idempotency_key == bindparam("key"))
_EXPERIMENT_BY_ID = _select().where(experiments.c.id == bindparam("experiment_id"))


def _targets(db: Connection, spec: ExperimentSpec) -> tuple[int, str]:
    """The station's id and the network's name, in one round trip; 422 if either is unknown."""
    station_id, network_name = db.execute(
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
    return int(station_id), str(network_name)


def _with_experiment(db: Connection, job: Row) -> tuple[Row, Row]:
    """The job's experiment as stored (server defaults included), and the job."""
    return db.execute(_EXPERIMENT_BY_ID, {"experiment_id": job.experiment_id}).one(), job


def _store_submission(db: Connection, spec: ExperimentSpec, idempotency_key: str | None) -> Row:
    """The experiment row and its program job; returns the job as stored."""
    station_id, network_name = _targets(db, spec)  # the network is checked even when a name is given
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
    responses=problem_responses(401, 403, 422),
)
async def submit_experiment(
    spec: ExperimentSpec,
    engine: EngineDep,
    writes: WritesDep,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(max_length=128, description="resubmitting with it returns the same experiment")
    ] = None,
) -> ExperimentAccepted:
    """Store the experiment and enqueue its program job in one transaction, which
    concurrent submissions share (api.group_commit); answered once it is committed.

    A resubmitted `Idempotency-Key` finds its job. Two racing with the same key from two
    API processes collide on the key's unique index; the loser's savepoint leaves nothing
    behind and it answers with the winner's job.
    """

    def store(db: Connection) -> tuple[Row, Row]:
        job = None if idempotency_key is None else db.execute(_JOB_BY_KEY, {"key": idempotency_key}).first()
        if job is None:
            job = _store_submission(db, spec, idempotency_key)
        return _with_experiment(db, job)

    try:
        experiment, job = await asyncio.wrap_future(writes.group.submit(store))
    except IntegrityError:
        if idempotency_key is None:
            raise
        experiment, job = await run_in_threadpool(_accepted_for_key, engine, idempotency_key)
    response.headers["Location"] = f"/experiments/{experiment.id}"
    return ExperimentAccepted(experiment=experiment_out(experiment), program_job=job_out(job))


def _accepted_for_key(engine: Engine, idempotency_key: str) -> tuple[Row, Row]:
    with engine.connect() as db:
        job = db.execute(_JOB_BY_KEY, {"key": idempotency_key}).first()
        if job is None:
            raise HTTPException(409, "a concurrent submission with this Idempotency-Key failed; retry")
        return _with_experiment(db, job)


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
