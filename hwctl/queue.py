"""The durable job queue: rows in the `jobs` table, no broker.

Every time here is *station-clock* seconds (`now_s`), passed in by the caller: a
simulated station on an accelerated or virtual clock drives due times, heartbeats and
windows exactly like a real board's clock. Each job runs in a lane: 'chip' jobs hold the
instrument, 'compute' jobs (evaluation, analysis) do not, so a station runs one of each
at a time and a long evaluation never delays a readback. The database guarantees at
most one running job per station and lane (a partial unique index); a claim is one
atomic UPDATE … RETURNING (inside `BEGIN IMMEDIATE` on SQLite, with `FOR UPDATE SKIP
LOCKED` on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict, Unpack

from sqlalchemy import Connection, Engine, Row, and_, exists, func, insert, or_, select, true, update
from sqlalchemy.exc import IntegrityError

from hwctl.store import wakeup
from hwctl.store.engine import SQLITE_BEGIN_OPTION
from hwctl.store.errors import NotFoundError, StoreError
from hwctl.store.schema import jobs
from hwctl.vocabulary import JobKind, JobLane, JobStatus

# Rows per INSERT when a campaign queues its readbacks: a schedule of thousands of points
# goes in as a few statements of bounded size.
ENQUEUE_BATCH_ROWS = 500


class JobStateError(StoreError):
    """The job is not in a state that allows the requested transition."""


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    lane: str
    station_id: int
    experiment_id: int | None
    payload: dict[str, Any]
    status: str
    run_at_s: float
    window_s: float | None
    priority: int
    attempts: int
    checkpoint: Any
    started_s: float | None
    run_id: int | None  # readbacks: the programming run they read
    scheduled_s: float | None  # readbacks: the scheduled board time (kept when resumed late)

    @classmethod
    def from_row(cls, row: Row[Any]) -> Job:
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Recovery:
    """What a worker's start-up recovery did, by job id."""

    interrupted: list[int]
    requeued: list[int]
    missed: list[int]
    failed: list[int]  # interrupted once too often


def _write(engine: Engine) -> Connection:
    """A connection whose transaction takes the write lock at once (SQLite)."""
    return engine.connect().execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction that takes SQLite's write lock up front: with another lane
    writing too, it then waits its turn instead of failing on a stale read snapshot."""
    with _write(engine) as conn, conn.begin():
        yield conn


class NewJob(TypedDict):
    """A job to queue: what `enqueue` and `enqueue_in` take as keywords."""

    kind: str
    station_id: int
    run_at_s: float
    payload: NotRequired[dict[str, Any] | None]
    window_s: NotRequired[float | None]
    priority: NotRequired[int]
    experiment_id: NotRequired[int | None]
    idempotency_key: NotRequired[str | None]
    lane: NotRequired[str]  # JobLane.CHIP unless the job never touches the instrument
    run_id: NotRequired[int | None]
    scheduled_s: NotRequired[float | None]


def _values(job: NewJob) -> dict[str, Any]:
    return {"status": JobStatus.QUEUED, **job, "payload": job.get("payload") or {}}


def enqueue_in(conn: Connection, **job: Unpack[NewJob]) -> Row[Any]:
    """Queue a job inside the caller's transaction, so it commits with the caller's rows;
    returns the new row as stored (server defaults included).

    A used `idempotency_key` raises IntegrityError (the caller's transaction is then void).
    The station's worker is woken when the transaction commits.
    """
    row = conn.execute(insert(jobs).values(**_values(job)).returning(*jobs.c)).one()
    wakeup.notify_in(conn, [job["station_id"]])
    return row


def enqueue_many_in(conn: Connection, new_jobs: Sequence[NewJob]) -> None:
    """Queue many jobs inside the caller's transaction, `ENQUEUE_BATCH_ROWS` per statement.

    Every job must name the same columns (one statement shape per batch).
    """
    for start in range(0, len(new_jobs), ENQUEUE_BATCH_ROWS):
        conn.execute(insert(jobs), [_values(job) for job in new_jobs[start : start + ENQUEUE_BATCH_ROWS]])
    wakeup.notify_in(conn, (job["station_id"] for job in new_jobs))


def enqueue(engine: Engine, **job: Unpack[NewJob]) -> int:
    """Queue a job in its own transaction; with an `idempotency_key` already used, return
    that job's id instead."""
    try:
        with _write(engine) as conn, conn.begin():
            return int(enqueue_in(conn, **job).id)
    except IntegrityError:
        key = job.get("idempotency_key")
        found = None if key is None else job_id_for_key(engine, key)
        if found is None:
            raise
        return found


def job_id_for_key(db: Engine | Connection, idempotency_key: str) -> int | None:
    """The job queued with `idempotency_key`, if any."""
    query = select(jobs.c.id).where(jobs.c.idempotency_key == idempotency_key)
    if isinstance(db, Connection):
        found = db.execute(query).scalar()
    else:
        with db.connect() as conn:
            found = conn.execute(query).scalar()
    return None if found is None else int(found)


def claim(engine: Engine, station_id: int, now_s: float, lane: str = JobLane.CHIP) -> Job | None:
    """Start the most urgent due job of a station's lane; None if none is due or one is running.

    Due jobs of the lane whose window has passed are marked missed first, in the same
    transaction.
    """
    # Aliases keep both subqueries from being correlated with the updated row.
    candidate, busy = jobs.alias("candidate"), jobs.alias("busy")
    due = (
        select(candidate.c.id)
        .where(candidate.c.station_id == station_id, candidate.c.lane == lane)
        .where(candidate.c.status == JobStatus.QUEUED, candidate.c.run_at_s <= now_s)
        .where(
            ~exists().where(
                busy.c.station_id == station_id, busy.c.lane == lane, busy.c.status == JobStatus.RUNNING
            )
        )
        .order_by(candidate.c.priority.desc(), candidate.c.run_at_s, candidate.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    start = (
        update(jobs)
        .where(jobs.c.id == due)
        .values(status=JobStatus.RUNNING, started_s=now_s, heartbeat_s=now_s, attempts=jobs.c.attempts + 1)
        .returning(*jobs.c)
    )
    try:
        with _write(engine) as conn, conn.begin():
            _mark_missed(conn, station_id, now_s, lane)
            row = conn.execute(start).one_or_none()
    except IntegrityError:
        return None  # another worker started a job in this lane first (the index said no)
    return Job.from_row(row) if row is not None else None


def _in_lane(lane: str | None) -> Any:
    """The condition selecting one lane's jobs, or every lane's (None)."""
    return true() if lane is None else jobs.c.lane == lane


NOT_STARTED_IN_WINDOW = "not started within its window"


def mark_missed(
    engine: Engine, station_id: int, now_s: float, why: str, lane: str | None = None
) -> list[int]:
    """Queued jobs past their window are missed now, saying `why` they could not start
    (a station whose link is down marks them while it waits for the board)."""
    with _write(engine) as conn, conn.begin():
        return _mark_missed(conn, station_id, now_s, lane, f"{NOT_STARTED_IN_WINDOW}: {why}")


def _mark_missed(
    conn: Connection,
    station_id: int,
    now_s: float,
    lane: str | None = None,
    reason: str = NOT_STARTED_IN_WINDOW,
) -> list[int]:
    """Queued jobs past their window are missed; the reason goes after any earlier error
    (why an interrupted readback could not continue in time)."""
    late = update(jobs).where(
        jobs.c.station_id == station_id,
        _in_lane(lane),
        jobs.c.status == JobStatus.QUEUED,
        jobs.c.window_s.is_not(None),
        jobs.c.run_at_s + jobs.c.window_s < now_s,
    )
    rows = conn.execute(
        late.values(
            status=JobStatus.MISSED, finished_s=now_s, error=func.coalesce(jobs.c.error + "; ", "") + reason
        ).returning(jobs.c.id)
    )
    return [int(r.id) for r in rows]


def heartbeat(
    engine: Engine,
    job_id: int,
    now_s: float,
    *,
    progress: float | None = None,
    message: str | None = None,
    checkpoint: Any = None,
) -> bool:
    """Record liveness, progress (0–1) and optionally the last committed block.

    Returns True when cancellation was requested: the worker should stop at a safe point
    and call `acknowledge_cancel`.
    """
    with _write(engine) as conn, conn.begin():
        return heartbeat_in(conn, job_id, now_s, progress=progress, message=message, checkpoint=checkpoint)


def heartbeat_in(
    conn: Connection,
    job_id: int,
    now_s: float,
    *,
    progress: float | None = None,
    message: str | None = None,
    checkpoint: Any = None,
) -> bool:
    """`heartbeat` inside the caller's transaction, so a checkpoint commits with the data
    it points at (a readback's block)."""
    values: dict[str, Any] = {"heartbeat_s": now_s}
    if progress is not None:
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress is a fraction 0–1, got {progress}")
        values["progress"] = progress
    if message is not None:
        values["progress_message"] = message
    if checkpoint is not None:
        values["checkpoint"] = checkpoint
    cancel = _transition_in(conn, job_id, (JobStatus.RUNNING,), values, returning=jobs.c.cancel_requested)
    return bool(cancel)


def complete(engine: Engine, job_id: int, now_s: float, result: dict[str, Any] | None = None) -> None:
    """The job succeeded; an error left by an earlier attempt is cleared."""
    values = {"status": JobStatus.SUCCEEDED, "finished_s": now_s, "result": result or {}, "progress": 1.0,
              "error": None}  # fmt: skip
    _transition(engine, job_id, (JobStatus.RUNNING,), values)


def fail(engine: Engine, job_id: int, now_s: float, error: str) -> None:
    with _write(engine) as conn, conn.begin():
        fail_in(conn, job_id, now_s, error)


def fail_in(conn: Connection, job_id: int, now_s: float, error: str) -> None:
    """A running (or interrupted) job fails with `error`, inside the caller's transaction."""
    values = {"status": JobStatus.FAILED, "finished_s": now_s, "error": error}
    _transition_in(conn, job_id, (JobStatus.RUNNING, JobStatus.INTERRUPTED), values)


def acknowledge_cancel(engine: Engine, job_id: int, now_s: float) -> None:
    """The worker stopped a running job whose cancellation was requested."""
    _transition(engine, job_id, (JobStatus.RUNNING,), {"status": JobStatus.CANCELLED, "finished_s": now_s})


def cancel(engine: Engine, job_id: int) -> str:
    """Cancel a queued job at once, or ask the worker to stop a running one.

    Returns the job's status afterwards ('cancelled' or still 'running').
    """
    with _write(engine) as conn, conn.begin():
        # Locked (PostgreSQL; SQLite's write lock is taken at BEGIN): a worker claiming the
        # job between this read and the update would otherwise run a job marked cancelled.
        status = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id).with_for_update()).scalar()
        if status is None:
            raise NotFoundError(f"job {job_id} does not exist")
        if status in (JobStatus.QUEUED, JobStatus.INTERRUPTED):
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(status=JobStatus.CANCELLED))
            return JobStatus.CANCELLED
        if status == JobStatus.RUNNING:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True))
            return JobStatus.RUNNING
    raise JobStateError(f"job {job_id} is already {status}; nothing to cancel")


def requeue(engine: Engine, job_id: int, reason: str) -> None:
    """Put a running job back in the queue at its last checkpoint, due when it was (a
    readback still inside its window runs at once, one past it is missed); `reason` stays
    in `error` until the job succeeds."""
    _transition(engine, job_id, (JobStatus.RUNNING,), {"status": JobStatus.QUEUED, "error": reason})


def resume(engine: Engine, job_id: int, now_s: float) -> None:
    """Operator decision: queue an interrupted (or failed) job again, due now.

    Its checkpoint is kept, so the worker continues from the last committed block (or,
    for a programming, from its run).
    """
    values = {"status": JobStatus.QUEUED, "run_at_s": now_s, "error": None, "cancel_requested": False}
    _transition(engine, job_id, (JobStatus.INTERRUPTED, JobStatus.FAILED), values)


def recover_stale(
    engine: Engine, station_id: int, stale_after_s: float, now_s: float, lane: str | None = None
) -> list[int]:
    """Mark running jobs (of one lane, or all) whose heartbeat is older than `stale_after_s`
    as interrupted."""
    with _write(engine) as conn, conn.begin():
        return _recover_stale_in(conn, station_id, stale_after_s, now_s, lane)


def _recover_stale_in(
    conn: Connection, station_id: int, stale_after_s: float, now_s: float, lane: str | None = None
) -> list[int]:
    stale = update(jobs).where(
        jobs.c.station_id == station_id,
        _in_lane(lane),
        jobs.c.status == JobStatus.RUNNING,
        or_(jobs.c.heartbeat_s.is_(None), jobs.c.heartbeat_s < now_s - stale_after_s),
    )
    interrupted = stale.values(status=JobStatus.INTERRUPTED, error="worker stopped")
    rows = conn.execute(interrupted.returning(jobs.c.id))
    return [int(r.id) for r in rows]


# give_up(conn, job, reason): ends, in the caller's transaction, what a job that has
# used up its attempts belongs to (a programming's experiment).
GiveUp = Callable[[Connection, Job, str], None]


def recover_on_start(
    engine: Engine,
    station_id: int,
    stale_after_s: float,
    now_s: float,
    *,
    max_attempts: int | None = None,
    give_up: GiveUp | None = None,
) -> Recovery:
    """What a station's worker (the owner of all its lanes) does before its first claim.

    Stale running jobs become interrupted, and every interrupted job is queued again at
    its last checkpoint: a programming resumes its run (re-reads the devices and goes on
    with those not yet within tolerance), a readback still inside its window runs at
    once and records its actual time. A job that already ran `max_attempts` times (a
    crash it keeps causing, or a worker killed again and again) fails instead, saying
    so, and `give_up` ends what it belongs to in the same transaction: one terminal,
    explained state. Jobs past their window are missed. All in one transaction: no one
    sees a job between two of these states.
    """
    waiting = (jobs.c.station_id == station_id, jobs.c.status == JobStatus.INTERRUPTED)
    used_up = select(jobs).where(*waiting, jobs.c.attempts >= max_attempts) if max_attempts else None
    with _write(engine) as conn, conn.begin():
        interrupted = _recover_stale_in(conn, station_id, stale_after_s, now_s)
        failed = []
        for row in conn.execute(used_up.order_by(jobs.c.id)).all() if used_up is not None else ():
            job = Job.from_row(row)
            reason = f"{job.kind} job {job.id}: {row.error}; gave up after {job.attempts} attempts"
            fail_in(conn, job.id, now_s, reason)
            if give_up is not None:
                give_up(conn, job, reason)
            failed.append(job.id)
        rows = conn.execute(update(jobs).where(*waiting).values(status=JobStatus.QUEUED).returning(jobs.c.id))
        requeued = [int(r.id) for r in rows]
        missed = _mark_missed(conn, station_id, now_s)
    return Recovery(
        interrupted=interrupted, requeued=sorted(set(requeued) - set(missed)), missed=missed, failed=failed
    )


def next_run_at_s(
    engine: Engine, station_id: int, lane: str | None = None, after_s: float | None = None
) -> float | None:
    """When the station's next queued job (of one lane, or any; due after `after_s` if
    given) is due, in station-clock s: what a worker sleeps until."""
    due = select(jobs.c.run_at_s).where(jobs.c.station_id == station_id, jobs.c.status == JobStatus.QUEUED)
    if lane is not None:
        due = due.where(jobs.c.lane == lane)
    if after_s is not None:
        due = due.where(jobs.c.run_at_s > after_s)
    with engine.connect() as conn:
        return conn.execute(due.order_by(jobs.c.run_at_s).limit(1)).scalar()


def readbacks_pending(conn: Connection, run_id: int, other_than_job_id: int) -> bool:
    """Whether a readback of the run other than `other_than_job_id` is queued or running."""
    pending = select(jobs.c.id).where(
        jobs.c.run_id == run_id, jobs.c.kind == JobKind.READBACK, jobs.c.id != other_than_job_id,
        jobs.c.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)),
    )  # fmt: skip
    return conn.execute(pending.limit(1)).first() is not None


def later_readback_due(engine: Engine, station_id: int, now_s: float, scheduled_s: float) -> bool:
    """Whether a queued readback of the station scheduled after `scheduled_s` is due at `now_s`.

    Compared by scheduled time, not `run_at_s`: a resumed readback is due "now" but keeps
    its place in the schedule, so two readbacks never hand the chip back and forth.
    """
    due = select(jobs.c.id).where(
        jobs.c.station_id == station_id, jobs.c.lane == JobLane.CHIP, jobs.c.status == JobStatus.QUEUED,
        jobs.c.kind == JobKind.READBACK, jobs.c.run_at_s <= now_s, jobs.c.scheduled_s > scheduled_s,
    )  # fmt: skip
    with engine.connect() as conn:
        return conn.execute(due.limit(1)).first() is not None


def bring_forward_in(conn: Connection, idempotency_key: str, run_at_s: float) -> None:
    """Make the queued job with `idempotency_key` due at `run_at_s` (nothing if it has started)."""
    queued = update(jobs).where(jobs.c.idempotency_key == idempotency_key, jobs.c.status == JobStatus.QUEUED)
    conn.execute(queued.values(run_at_s=run_at_s))


def last_board_time_s(engine: Engine, station_id: int) -> float | None:
    """The latest board time recorded by the station's chip lane (every chip-lane time is a
    reading of the board's clock), None if it never ran a job."""
    latest = select(func.max(func.coalesce(jobs.c.finished_s, jobs.c.heartbeat_s))).where(
        jobs.c.station_id == station_id, jobs.c.lane == JobLane.CHIP
    )
    with engine.connect() as conn:
        found = conn.execute(latest).scalar()
    return None if found is None else float(found)


def get_job(engine: Engine, job_id: int) -> Row[Any]:
    with engine.connect() as conn:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"job {job_id} does not exist")
    return row


def _transition(
    engine: Engine, job_id: int, allowed: tuple[str, ...], values: dict[str, Any], returning: Any = None
) -> Any:
    with _write(engine) as conn, conn.begin():
        return _transition_in(conn, job_id, allowed, values, returning)


def _transition_in(
    conn: Connection, job_id: int, allowed: tuple[str, ...], values: dict[str, Any], returning: Any = None
) -> Any:
    change = update(jobs).where(and_(jobs.c.id == job_id, jobs.c.status.in_(allowed))).values(**values)
    row = conn.execute(change.returning(returning if returning is not None else jobs.c.id)).one_or_none()
    if row is not None:
        return row[0]
    status = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
    if status is None:
        raise NotFoundError(f"job {job_id} does not exist")
    raise JobStateError(f"job {job_id} is {status}, expected {' or '.join(allowed)}")
