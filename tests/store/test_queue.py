"""The job queue's rules, on SQLite and PostgreSQL, with explicit station-clock times."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import IntegrityError

from hwctl import queue
from hwctl.queue import JobStateError
from hwctl.store.schema import jobs
from hwctl.vocabulary import JobKind


def test_claim_takes_the_highest_priority_then_earliest_due_job(
    engine: Engine, station_ids: list[int]
) -> None:
    s = station_ids[0]
    late = queue.enqueue(engine, kind=JobKind.READBACK, station_id=s, run_at_s=20.0)
    early = queue.enqueue(engine, kind=JobKind.READBACK, station_id=s, run_at_s=10.0)
    urgent = queue.enqueue(engine, kind="evaluate", station_id=s, run_at_s=30.0, priority=5)
    order = []
    for now_s in (100.0, 101.0, 102.0):
        job = queue.claim(engine, s, now_s)
        assert job is not None and job.started_s == now_s and job.attempts == 1
        order.append(job.id)
        queue.complete(engine, job.id, now_s, {"ok": True})
    assert order == [urgent, early, late]
    assert queue.claim(engine, s, 200.0) is None


def test_a_job_is_not_claimed_before_its_station_clock_reaches_run_at(
    engine: Engine, station_ids: list[int]
) -> None:
    job = queue.enqueue(engine, kind=JobKind.READBACK, station_id=station_ids[0], run_at_s=3_600.0)
    assert queue.next_run_at_s(engine, station_ids[0]) == 3_600.0
    assert queue.claim(engine, station_ids[0], 3_599.9) is None
    claimed = queue.claim(engine, station_ids[0], 3_600.0)
    assert claimed is not None and claimed.id == job


def test_a_second_claim_for_a_busy_station_returns_none_but_other_stations_run(
    engine: Engine, station_ids: list[int]
) -> None:
    a, b = station_ids[:2]
    for s in (a, a, b):
        queue.enqueue(engine, kind=JobKind.READBACK, station_id=s, run_at_s=0.0)
    assert queue.claim(engine, a, 1.0) is not None
    assert queue.claim(engine, a, 1.0) is None
    assert queue.claim(engine, b, 1.0) is not None


def test_the_database_itself_rejects_a_second_running_job_for_a_station(
    engine: Engine, station_ids: list[int]
) -> None:
    row = {"kind": JobKind.READBACK, "station_id": station_ids[0], "run_at_s": 0.0, "status": "running"}
    with engine.begin() as conn:
        conn.execute(insert(jobs).values(**row))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(jobs).values(**row))


def test_enqueue_with_a_used_idempotency_key_returns_the_existing_job(
    engine: Engine, station_ids: list[int]
) -> None:
    first = queue.enqueue(
        engine, kind=JobKind.PROGRAM, station_id=station_ids[0], run_at_s=0.0, idempotency_key="exp-1"
    )
    again = queue.enqueue(
        engine, kind=JobKind.PROGRAM, station_id=station_ids[0], run_at_s=9.0, idempotency_key="exp-1"
    )
    assert again == first
    assert queue.get_job(engine, first).run_at_s == 0.0


def test_cancel_stops_a_queued_job_at_once_and_asks_a_running_one_to_stop(
    engine: Engine, station_ids: list[int]
) -> None:
    s = station_ids[0]
    running = queue.enqueue(engine, kind=JobKind.PROGRAM, station_id=s, run_at_s=0.0, priority=1)
    waiting = queue.enqueue(engine, kind=JobKind.READBACK, station_id=s, run_at_s=0.0)
    assert queue.claim(engine, s, 1.0) is not None
    assert queue.cancel(engine, waiting) == "cancelled"
    assert queue.cancel(engine, running) == "running"
    assert queue.heartbeat(engine, running, 2.0, progress=0.4, message="block 4/10") is True
    queue.acknowledge_cancel(engine, running, 3.0)
    assert queue.get_job(engine, running).status == "cancelled"
    with pytest.raises(JobStateError, match="already cancelled"):
        queue.cancel(engine, running)


def test_a_finished_job_cannot_be_completed_again(engine: Engine, station_ids: list[int]) -> None:
    job = queue.enqueue(engine, kind=JobKind.READBACK, station_id=station_ids[0], run_at_s=0.0)
    queue.claim(engine, station_ids[0], 1.0)
    queue.fail(engine, job, 2.0, "board did not answer")
    with pytest.raises(JobStateError, match="is failed, expected running"):
        queue.complete(engine, job, 3.0)


def test_stale_running_job_is_interrupted_but_a_fresh_one_is_left_alone(
    engine: Engine, station_ids: list[int]
) -> None:
    a, b = station_ids[:2]
    stale = queue.enqueue(engine, kind=JobKind.READBACK, station_id=a, run_at_s=0.0)
    fresh = queue.enqueue(engine, kind=JobKind.READBACK, station_id=b, run_at_s=0.0)
    queue.claim(engine, a, 0.0)
    queue.claim(engine, b, 0.0)
    queue.heartbeat(engine, fresh, 95.0)
    assert queue.recover_stale(engine, a, stale_after_s=60.0, now_s=100.0) == [stale]
    assert queue.recover_stale(engine, b, stale_after_s=60.0, now_s=100.0) == []
    assert queue.get_job(engine, stale).status == "interrupted"


def test_interrupted_programming_resumes_from_its_checkpoint_until_it_has_used_its_attempts(
    engine: Engine, station_ids: list[int]
) -> None:
    s = station_ids[0]
    job = queue.enqueue(engine, kind=JobKind.PROGRAM, station_id=s, run_at_s=0.0)
    queue.claim(engine, s, 0.0)
    queue.heartbeat(engine, job, 10.0, progress=0.3, checkpoint={"run_id": 29})
    recovery = queue.recover_on_start(engine, s, stale_after_s=60.0, now_s=500.0, max_attempts=2)
    assert recovery.interrupted == [job] and recovery.requeued == [job] and recovery.failed == []
    resumed = queue.claim(engine, s, 501.0)
    assert resumed is not None and resumed.id == job
    assert resumed.checkpoint == {"run_id": 29} and resumed.attempts == 2

    given_up: list[tuple[int, str]] = []
    recovery = queue.recover_on_start(
        engine, s, stale_after_s=60.0, now_s=900.0, max_attempts=2,
        give_up=lambda conn, out, reason: given_up.append((out.id, reason)),
    )  # fmt: skip
    assert recovery.failed == [job] and recovery.requeued == []
    failed = queue.get_job(engine, job)
    assert (failed.status, failed.finished_s) == ("failed", 900.0)
    assert failed.error == f"program job {job}: worker stopped; gave up after 2 attempts"
    assert given_up == [(job, failed.error)]
    queue.resume(engine, job, 1_000.0)  # an operator may still try once more


def test_a_late_readback_inside_its_window_runs_at_once_and_records_the_actual_time(
    engine: Engine, station_ids: list[int]
) -> None:
    s = station_ids[0]
    interrupted = queue.enqueue(engine, kind=JobKind.READBACK, station_id=s, run_at_s=100.0, window_s=1_000.0)
    queue.claim(engine, s, 100.0)
    recovery = queue.recover_on_start(engine, s, stale_after_s=60.0, now_s=400.0)
    assert recovery.requeued == [interrupted]
    job = queue.claim(engine, s, 400.0)
    assert job is not None and job.id == interrupted and job.started_s == 400.0 and job.run_at_s == 100.0


def test_a_readback_past_its_window_is_missed_not_run(engine: Engine, station_ids: list[int]) -> None:
    s = station_ids[0]
    interrupted = queue.enqueue(engine, kind=JobKind.READBACK, station_id=s, run_at_s=100.0, window_s=60.0)
    never_started = queue.enqueue(engine, kind=JobKind.READBACK, station_id=s, run_at_s=120.0, window_s=60.0)
    queue.claim(engine, s, 100.0)
    recovery = queue.recover_on_start(engine, s, stale_after_s=60.0, now_s=1_000.0)
    assert sorted(recovery.missed) == [interrupted, never_started]
    assert queue.claim(engine, s, 1_000.0) is None
    assert queue.get_job(engine, never_started).status == "missed"


def test_a_readback_requeued_after_a_link_loss_runs_inside_its_window_else_is_missed_with_both_reasons(
    engine: Engine, station_ids: list[int]
) -> None:
    s = station_ids[0]
    in_time = queue.enqueue(engine, kind=JobKind.READBACK, station_id=s, run_at_s=100.0, window_s=1_000.0)
    queue.claim(engine, s, 100.0)
    queue.requeue(engine, in_time, "link lost during attempt 1")
    resumed = queue.claim(engine, s, 500.0)
    assert resumed is not None and resumed.id == in_time and resumed.attempts == 2
    queue.complete(engine, in_time, 510.0)
    assert queue.get_job(engine, in_time).error is None  # succeeded: no stale error

    too_late = queue.enqueue(engine, kind=JobKind.READBACK, station_id=s, run_at_s=2_000.0, window_s=60.0)
    queue.claim(engine, s, 2_000.0)
    queue.requeue(engine, too_late, "link lost during attempt 1")
    assert queue.claim(engine, s, 2_100.0) is None
    missed = queue.get_job(engine, too_late)
    assert missed.status == "missed"
    assert missed.error == "link lost during attempt 1; not started within its window"


def test_many_jobs_go_in_bounded_batches_and_readbacks_are_found_by_run_and_schedule_in_sql(
    engine: Engine, station_ids: list[int]
) -> None:
    s = station_ids[0]
    with engine.begin() as conn:
        queue.enqueue_many_in(conn, [
            queue.NewJob(kind=JobKind.READBACK, station_id=s, run_at_s=float(i), scheduled_s=float(i),
                         idempotency_key=f"readback:{i}")
            for i in range(2 * queue.ENQUEUE_BATCH_ROWS + 7)
        ])  # fmt: skip
    with engine.connect() as conn:
        assert (
            conn.execute(select(func.count()).select_from(jobs)).scalar_one()
            == 2 * queue.ENQUEUE_BATCH_ROWS + 7
        )
    assert queue.later_readback_due(engine, s, now_s=10.0, scheduled_s=5.0)  # 6…10 are due, later than 5
    assert not queue.later_readback_due(engine, s, now_s=10.0, scheduled_s=10.0)
