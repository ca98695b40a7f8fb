"""Job lanes, on SQLite and PostgreSQL: one running job per station *and lane*, so a job
that does not need the instrument never holds up one that does."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, insert, select, table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import column

from drivers.base import Geometry
from hwctl import queue
from hwctl.store import records
from hwctl.store.engine import make_engine
from hwctl.store.migrate import upgrade
from hwctl.store.schema import jobs, utc_now
from hwctl.vocabulary import JobKind, JobLane

EVALUATE = JobKind.EVALUATE


def test_a_running_compute_job_leaves_the_chip_lane_free_and_each_lane_runs_one_job(
    engine: Engine, station_ids: list[int]
) -> None:
    s = station_ids[0]
    evaluation = queue.enqueue(engine, kind=EVALUATE, station_id=s, run_at_s=0.0, lane=JobLane.COMPUTE)
    second_evaluation = queue.enqueue(engine, kind=EVALUATE, station_id=s, run_at_s=0.0, lane=JobLane.COMPUTE)
    readback = queue.enqueue(engine, kind=JobKind.READBACK, station_id=s, run_at_s=10.0, priority=10)
    second_readback = queue.enqueue(engine, kind=JobKind.READBACK, station_id=s, run_at_s=10.0, priority=10)

    running = queue.claim(engine, s, 5.0, JobLane.COMPUTE)
    assert running is not None and (running.id, running.lane) == (evaluation, JobLane.COMPUTE)
    assert queue.claim(engine, s, 5.0, JobLane.CHIP) is None  # nothing of the chip's due yet
    chip_job = queue.claim(engine, s, 10.0, JobLane.CHIP)
    assert chip_job is not None and (chip_job.id, chip_job.lane) == (readback, JobLane.CHIP)
    assert queue.claim(engine, s, 10.0, JobLane.CHIP) is None  # one per lane: the chip is busy
    assert queue.claim(engine, s, 10.0, JobLane.COMPUTE) is None  # and so is the compute lane

    queue.complete(engine, running.id, 11.0)
    later = queue.claim(engine, s, 11.0, JobLane.COMPUTE)
    assert later is not None and later.id == second_evaluation
    queue.complete(engine, chip_job.id, 12.0)
    last = queue.claim(engine, s, 12.0, JobLane.CHIP)
    assert last is not None and last.id == second_readback


def test_the_database_refuses_a_second_running_job_in_a_lane_but_not_in_the_other_lane(
    engine: Engine, station_ids: list[int]
) -> None:
    s = station_ids[0]
    with engine.begin() as conn:
        conn.execute(insert(jobs).values(kind=JobKind.READBACK, station_id=s, run_at_s=0.0, status="running"))
        conn.execute(insert(jobs).values(kind=EVALUATE, lane=JobLane.COMPUTE, station_id=s, run_at_s=0.0,
                                         status="running"))  # fmt: skip
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(jobs).values(kind=JobKind.READBACK, station_id=s, run_at_s=0.0, status="running"))


def test_an_unknown_lane_is_refused(engine: Engine, station_ids: list[int]) -> None:
    with pytest.raises(IntegrityError):
        queue.enqueue(engine, kind=EVALUATE, station_id=station_ids[0], run_at_s=0.0, lane="gpu")


def test_a_compute_claim_never_marks_a_late_readback_missed(engine: Engine, station_ids: list[int]) -> None:
    """The compute lane's clock is an estimate: only the chip lane decides a readback is missed."""
    s = station_ids[0]
    readback = queue.enqueue(engine, kind=JobKind.READBACK, station_id=s, run_at_s=10.0, window_s=5.0)
    assert queue.claim(engine, s, 100.0, JobLane.COMPUTE) is None
    assert queue.get_job(engine, readback).status == "queued"
    assert queue.claim(engine, s, 100.0, JobLane.CHIP) is None
    assert queue.get_job(engine, readback).status == "missed"


def test_pausing_one_lane_leaves_the_other_lanes_running_job_alone(
    engine: Engine, station_ids: list[int]
) -> None:
    s = station_ids[0]
    queue.enqueue(engine, kind=EVALUATE, station_id=s, run_at_s=0.0, lane=JobLane.COMPUTE)
    queue.enqueue(engine, kind=JobKind.READBACK, station_id=s, run_at_s=0.0)
    evaluation = queue.claim(engine, s, 1.0, JobLane.COMPUTE)
    readback = queue.claim(engine, s, 1.0, JobLane.CHIP)
    assert evaluation is not None and readback is not None
    assert queue.recover_stale(engine, s, -1.0, 2.0, JobLane.CHIP) == [readback.id]
    assert queue.get_job(engine, evaluation.id).status == "running"


def test_next_due_time_per_lane_and_after_a_moment(engine: Engine, station_ids: list[int]) -> None:
    s = station_ids[0]
    queue.enqueue(engine, kind=EVALUATE, station_id=s, run_at_s=5.0, lane=JobLane.COMPUTE)
    queue.enqueue(engine, kind=JobKind.READBACK, station_id=s, run_at_s=20.0)
    assert queue.next_run_at_s(engine, s) == 5.0
    assert queue.next_run_at_s(engine, s, JobLane.CHIP) == 20.0
    assert queue.next_run_at_s(engine, s, after_s=5.0) == 20.0
    assert queue.next_run_at_s(engine, s, JobLane.COMPUTE, after_s=5.0) is None


def test_migration_0003_moves_queued_evaluations_and_analyses_to_the_compute_lane(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine, "0002")
    required = ("kind", "station_id", "run_at_s", "status", "payload", "priority", "attempts", "progress",
                "progress_message", "cancel_requested", "created_at")  # fmt: skip
    old_jobs = table("jobs", *(column(name, jobs.c[name].type) for name in required))  # no lane yet
    with engine.begin() as conn:
        station = records.add_station(
            conn, "old", resource="sim://", chip_serial="SIM-0", geometry=Geometry(1, 4, 4),
            amplitude_limit_ua=500.0,
        )  # fmt: skip
        for kind in ("program", "readback", "evaluate", "analyze"):
            conn.execute(insert(old_jobs).values(kind=kind, station_id=station, run_at_s=0.0, status="queued",
                         payload={}, priority=0, attempts=0, progress=0.0, progress_message="",
                         cancel_requested=False, created_at=utc_now()))  # fmt: skip
    upgrade(engine)
    with engine.connect() as conn:
        lanes = dict(conn.execute(select(jobs.c.kind, jobs.c.lane)).all())
    engine.dispose()
    assert lanes == {"program": "chip", "readback": "chip", "evaluate": "compute", "analyze": "compute"}
