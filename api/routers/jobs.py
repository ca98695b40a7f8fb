"""Jobs: list and inspect the queue, cancel a job, stream a job's progress as Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import Connection, Engine, Row, Select, select
from starlette.concurrency import run_in_threadpool

from api.deps import Db, EngineDep, ReadAccess, SettingsDep, WriteAccess
from api.lookup import count
from api.pagination import Page, Paging
from api.params import PathId, QueryId
from api.problems import problem_responses
from api.schemas.jobs import TERMINAL_STATUSES, Job, JobStatus
from hwctl import queue
from hwctl.store.schema import jobs, stations

router = APIRouter(prefix="/jobs", tags=["jobs"])
EVENT_STREAM = "text/event-stream"


def job_out(row: Row) -> Job:
    return Job.model_validate(row, from_attributes=True)


def jobs_query(
    status: JobStatus | None = None, kind: str | None = None, station: str | None = None,
    experiment_id: QueryId = None,
) -> Select[Any]:
    query = select(jobs).order_by(jobs.c.id)
    if status is not None:
        query = query.where(jobs.c.status == status)
    if kind is not None:
        query = query.where(jobs.c.kind == kind)
    if experiment_id is not None:
        query = query.where(jobs.c.experiment_id == experiment_id)
    if station is not None:
        query = query.join(stations, stations.c.id == jobs.c.station_id).where(stations.c.name == station)
    return query


def load_job(db: Connection, job_id: int) -> Job:
    row = db.execute(select(jobs).where(jobs.c.id == job_id)).first()
    if row is None:
        raise HTTPException(404, f"job {job_id} does not exist")
    return job_out(row)


@router.get("", response_model=Page[Job], dependencies=[ReadAccess])
def list_jobs(
    db: Db, page: Paging, status: JobStatus | None = None, kind: str | None = None,
    station: str | None = None, experiment_id: QueryId = None,
) -> Page[Job]:
    query = jobs_query(status, kind, station, experiment_id)
    rows = db.execute(query.limit(page.limit).offset(page.offset)).all()
    return Page(items=[job_out(r) for r in rows], total=count(db, query), limit=page.limit,
                offset=page.offset)


@router.get("/{job_id}", response_model=Job, dependencies=[ReadAccess], responses=problem_responses(404))
def get_job(job_id: PathId, db: Db) -> Job:
    return load_job(db, job_id)


@router.post(
    "/{job_id}/cancel", response_model=Job, dependencies=[WriteAccess],
    responses=problem_responses(401, 403, 404, 409),
)
def cancel_job(job_id: PathId, engine: EngineDep) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop at its next block."""
    queue.cancel(engine, job_id)
    return _read_job(engine, job_id)


def _read_job(engine: Engine, job_id: int) -> Job:
    with engine.connect() as db:
        return load_job(db, job_id)


def _event(name: str, job: Job) -> str:
    return f"event: {name}\ndata: {json.dumps(job.model_dump(mode='json'))}\n\n"


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    dependencies=[ReadAccess],
    responses={
        200: {"description": "`progress` on every change, then one `end`", "content": {EVENT_STREAM: {}}},
        **problem_responses(404),
    },
)
async def job_events(
    job_id: PathId, request: Request, engine: EngineDep, settings: SettingsDep
) -> StreamingResponse:
    """Server-Sent Events: the job as JSON whenever it changes, until it reaches a terminal state."""
    first = await run_in_threadpool(_read_job, engine, job_id)  # 404 before the stream starts

    async def events() -> AsyncIterator[str]:
        job, last = first, None
        while True:
            if job.status in TERMINAL_STATUSES:
                yield _event("end", job)
                return
            if job != last:
                yield _event("progress", job)
                last = job
            await asyncio.sleep(settings.sse_poll_s)
            if await request.is_disconnected():
                return
            job = await run_in_threadpool(_read_job, engine, job_id)

    return StreamingResponse(events(), media_type=EVENT_STREAM, headers={"Cache-Control": "no-cache"})
