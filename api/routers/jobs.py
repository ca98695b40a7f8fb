"""Jobs: list and inspect the queue, cancel a job, stream a job's progress as Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool

from api.deps import Db, EngineDep, ReadAccess, SettingsDep, WriteAccess
from api.pagination import Page, Paging
from api.params import PathId, QueryId
from api.problems import problem_responses
from api.schemas.jobs import Job
from api.views import job_out, page_of, paging
from hwctl import queue
from hwctl.store import queries
from hwctl.store.engine import connect
from hwctl.store.errors import DatabaseUnavailableError
from hwctl.vocabulary import TERMINAL_JOB_STATUSES, JobKind, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])
EVENT_STREAM = "text/event-stream"
KEEP_ALIVE = ": keep-alive\n\n"  # an SSE comment: clients ignore it, connections stay open


@router.get("", response_model=Page[Job], dependencies=[ReadAccess])
def list_jobs(
    db: Db, page: Paging, status: JobStatus | None = None, kind: JobKind | None = None,
    station: str | None = None, experiment_id: QueryId = None,
) -> Page[Job]:
    filters = queries.JobFilter(status=status, kind=kind, station=station, experiment_id=experiment_id)
    return page_of(queries.list_jobs(db, paging(page), filters), page, job_out)


@router.get("/{job_id}", response_model=Job, dependencies=[ReadAccess], responses=problem_responses(404))
def get_job(job_id: PathId, db: Db) -> Job:
    return job_out(queries.get_job(db, job_id))


@router.post(
    "/{job_id}/cancel", response_model=Job, dependencies=[WriteAccess],
    responses=problem_responses(401, 403, 404, 409),
)
def cancel_job(job_id: PathId, engine: EngineDep) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop at its next block."""
    queue.cancel(engine, job_id)
    return _read_job(engine, job_id)


def _read_job(engine: Engine, job_id: int) -> Job:
    with connect(engine) as db:
        return job_out(queries.get_job(db, job_id))


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
    """Server-Sent Events: the job as JSON whenever it changes, until it reaches a terminal state.

    A job may make no progress for a long time (a readback due in hours); a `: keep-alive`
    comment every `sse_keepalive_s` at most keeps proxies from closing the idle connection
    and tells the client the stream is alive. While the database is unreachable the stream
    waits for it instead of ending."""
    first = await run_in_threadpool(_read_job, engine, job_id)  # 404 before the stream starts

    async def events() -> AsyncIterator[str]:
        job, last = first, None
        sent_at = time.monotonic()
        while True:
            if job.status in TERMINAL_JOB_STATUSES:
                yield _event("end", job)
                return
            if job != last:
                yield _event("progress", job)
                last, sent_at = job, time.monotonic()
            elif time.monotonic() - sent_at >= settings.sse_keepalive_s:
                yield KEEP_ALIVE
                sent_at = time.monotonic()
            await asyncio.sleep(min(settings.sse_poll_s, settings.sse_keepalive_s))
            if await request.is_disconnected():
                return
            try:
                job = await run_in_threadpool(_read_job, engine, job_id)
            except (DatabaseUnavailableError, OperationalError, InterfaceError):
                continue  # the database is restarting: the stream waits for it (and keeps alive)

    return StreamingResponse(events(), media_type=EVENT_STREAM, headers={"Cache-Control": "no-cache"})
