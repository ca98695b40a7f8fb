"""Several worker processes race for the jobs of several stations: every job runs once."""

from __future__ import annotations

import multiprocessing
import os

from sqlalchemy import Engine, func, select, text

from hwctl import queue
from hwctl.store.engine import make_engine
from hwctl.store.schema import jobs

WORKERS = 4
JOBS_PER_STATION = 80


def _work(url: str, station_ids: list[int]) -> None:
    """A worker serving every station: claim, record the execution, complete, until idle."""
    engine = make_engine(url)
    worker = os.getpid()
    idle_rounds = 0
    while idle_rounds < 3:
        ran = False
        for station in station_ids:
            job = queue.claim(engine, station, now_s=1.0)
            if job is None:
                continue
            ran = True
            with engine.begin() as conn:
                conn.execute(
                    text("INSERT INTO executions (job_id, worker) VALUES (:j, :w)"),
                    {"j": job.id, "w": worker},
                )
            queue.complete(engine, job.id, 1.0, {"worker": worker})
        idle_rounds = 0 if ran else idle_rounds + 1
    engine.dispose()


def test_concurrent_workers_run_every_job_exactly_once(engine: Engine, station_ids: list[int]) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE executions (job_id INTEGER NOT NULL, worker INTEGER NOT NULL)"))
    expected = {
        queue.enqueue(engine, kind="readback", station_id=s, run_at_s=0.0, priority=i % 3)
        for s in station_ids
        for i in range(JOBS_PER_STATION)
    }
    url = engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_work, args=(url, station_ids)) for _ in range(WORKERS)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0
    with engine.connect() as conn:
        executed = [row.job_id for row in conn.execute(text("SELECT job_id FROM executions"))]
        workers_used = conn.execute(text("SELECT COUNT(DISTINCT worker) FROM executions")).scalar_one()
        statuses = dict(conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status)).all())
    assert len(executed) == len(expected), "some job ran twice or never"
    assert set(executed) == expected
    assert statuses == {"succeeded": len(expected)}
    assert workers_used > 1, "the race was not exercised: one worker did everything"
