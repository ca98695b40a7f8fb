"""The station worker: the one owner of a station's chip, running its jobs on the board clock.

API handlers never touch an instrument; they enqueue jobs. A worker per station claims
the due jobs one at a time and runs them (`hwctl.campaign`). On start it recovers from
a crash: jobs left running become interrupted; programming stays interrupted (the
chip's state is unknown: an operator decides), readbacks are queued again and resume
from their last committed block, late ones run at once and record their actual time,
and those past their window are missed. Between jobs it sleeps until the next due job,
converting station seconds to wall seconds by the clock rate it observes (or, on a
virtual-clock chip, advances the board to it). A stop request (SIGTERM/SIGINT, or
`Worker.stop`) is honoured at the next block; the board is left safe on every exit path.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, select, update

from drivers.errors import LinkError
from hwctl.campaign import HANDLERS, READ_BLOCK_DEVICES, JobCancelled, JobContext, JobPaused
from hwctl.experiment_spec import JOB_PROGRAM
from hwctl.settings import Settings
from hwctl.station import DEFAULT_TIMEOUT_S, Station, open_station
from hwctl.store.engine import make_engine
from hwctl.store.migrate import ensure_migrated
from hwctl.store.schema import jobs, stations

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    poll_s: float = 0.5  # longest wall-clock sleep between looks at the queue
    read_block_devices: int = READ_BLOCK_DEVICES
    link_timeout_s: float = DEFAULT_TIMEOUT_S


class WorkerError(RuntimeError):
    """The worker cannot run for this station (unknown station, unusable resource)."""


class Worker:
    """Runs one station's jobs until stopped; usable as a process body or a thread."""

    def __init__(
        self,
        engine: Engine,
        station_name: str,
        options: WorkerOptions = WorkerOptions(),
        stop_event: threading.Event | None = None,
    ) -> None:
        self.engine = engine
        self.station_name = station_name
        self.options = options
        self.stop_event = stop_event or threading.Event()
        self._thread: threading.Thread | None = None
        self._cache: dict[Any, Any] = {}
        self.error: BaseException | None = None

    # -- as a thread (the embedded server) ---------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run_catching, name=f"worker-{self.station_name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the loop to stop at the next safe point and wait for the board to be safe."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run_catching(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # reported to whoever joins the thread
            log.exception("worker for station %s stopped on an error", self.station_name)
            self.error = exc

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> None:
        """Open the station, recover, then claim and run due jobs until stopped."""
        with self.engine.connect() as conn:
            row = conn.execute(select(stations).where(stations.c.name == self.station_name)).one_or_none()
        if row is None:
            raise WorkerError(f"no station named {self.station_name!r}; register it first")
        station_id = int(row.id)
        with open_station(
            row.name, row.resource, timeout_s=self.options.link_timeout_s,
            advances_clock=row.clock_kind == "virtual",
        ) as station:  # fmt: skip
            self._recover(station_id, station.clock_now_s())
            while not self.stop_event.is_set():
                now_s = station.clock_now_s()
                with self.engine.begin() as conn:
                    queue.mark_missed(conn, station_id, now_s)
                    job = queue.claim(conn, station_id, now_s)
                if job is not None:
                    self._run_job(station, station_id, job)
                    continue
                self._wait_for_next(station, station_id, now_s)
        log.info("worker for station %s stopped; board left in its safe state", self.station_name)

    def _recover(self, station_id: int, now_s: float) -> None:
        with self.engine.begin() as conn:
            interrupted = queue.recover_stale(conn, station_id, now_s)
            for job_id, kind in interrupted:
                if kind == JOB_PROGRAM:
                    log.warning("programming job %d was interrupted; not re-run (chip state unknown)", job_id)
                else:
                    queue.requeue(conn, job_id)

    def _wait_for_next(self, station: Station, station_id: int, now_s: float) -> None:
        with self.engine.connect() as conn:
            next_s = queue.next_run_at(conn, station_id)
        if next_s is not None and next_s > now_s and station.advance_to_s(next_s):
            return
        delay_s = (
            self.options.poll_s
            if next_s is None
            else station.wall_delay_s(next_s - now_s, self.options.poll_s)
        )
        self.stop_event.wait(delay_s)

    def _run_job(self, station: Station, station_id: int, job: ClaimedJob) -> None:
        def heartbeat(progress: float, message: str, checkpoint: dict[str, Any] | None) -> bool:
            with self.engine.begin() as conn:
                return queue.heartbeat(conn, job.id, station.clock_now_s(), progress, message, checkpoint)

        def complete(conn: Connection, result: dict[str, Any]) -> None:
            queue.complete(conn, job.id, station.clock_now_s(), result)

        ctx = JobContext(
            engine=self.engine, station=station, station_id=station_id, job_id=job.id, kind=job.kind,
            payload=job.payload, checkpoint=job.checkpoint, heartbeat=heartbeat, complete=complete,
            stopping=self.stop_event.is_set, cache=self._cache,
            read_block_devices=self.options.read_block_devices,
        )  # fmt: skip
        log.info("station %s: %s job %d starts", self.station_name, job.kind, job.id)
        try:
            HANDLERS[job.kind](ctx)
        except JobCancelled:
            with self.engine.begin() as conn:
                queue.finish(conn, job.id, "cancelled", station.clock_now_s())
        except JobPaused:
            with self.engine.begin() as conn:
                if job.kind == JOB_PROGRAM:
                    queue.finish(conn, job.id, "interrupted", station.clock_now_s(), "worker stopped")
                else:
                    queue.requeue(conn, job.id)
        except LinkError as exc:
            with self.engine.begin() as conn:
                queue.finish(
                    conn, job.id, "interrupted", station.clock_now_s(), f"link to the chip failed: {exc}"
                )
            raise
        except Exception as exc:
            log.exception("station %s: %s job %d failed", self.station_name, job.kind, job.id)
            with self.engine.begin() as conn:
                queue.finish(conn, job.id, "failed", None, f"{type(exc).__name__}: {exc}")


def run_worker(
    settings: Settings,
    station_name: str,
    stop_event: threading.Event | None = None,
    options: WorkerOptions = WorkerOptions(),
) -> None:
    """The worker process body: connect, refuse an unmigrated database, run until stopped."""
    engine = make_engine(settings.database_url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    try:
        ensure_migrated(engine)
        Worker(engine, station_name, options, stop_event).run()
    finally:
        engine.dispose()


# -- queue operations (stand-in until hwctl's job-queue module lands) ------------------------
class queue:
    @staticmethod
    def mark_missed(conn: Connection, station_id: int, now_s: float) -> int:
        late = and_(jobs.c.window_s.is_not(None), jobs.c.run_at_s + jobs.c.window_s < now_s)
        done = conn.execute(
            update(jobs)
            .where(
                jobs.c.station_id == station_id, jobs.c.status == "queued", jobs.c.checkpoint.is_(None), late
            )
            .values(status="missed", finished_s=now_s)
        )
        return int(done.rowcount)

    @staticmethod
    def claim(conn: Connection, station_id: int, now_s: float) -> ClaimedJob | None:
        row = conn.execute(
            select(jobs.c.id, jobs.c.kind, jobs.c.payload, jobs.c.checkpoint)
            .where(jobs.c.station_id == station_id, jobs.c.status == "queued", jobs.c.run_at_s <= now_s)
            .order_by(jobs.c.priority.desc(), jobs.c.run_at_s, jobs.c.id)
            .limit(1)
        ).one_or_none()
        if row is None:
            return None
        taken = conn.execute(
            update(jobs)
            .where(jobs.c.id == row.id, jobs.c.status == "queued")
            .values(status="running", started_s=now_s, heartbeat_s=now_s, attempts=jobs.c.attempts + 1)
        )
        if taken.rowcount != 1:
            return None
        return ClaimedJob(int(row.id), row.kind, dict(row.payload or {}), row.checkpoint)

    @staticmethod
    def recover_stale(conn: Connection, station_id: int, now_s: float) -> list[tuple[int, str]]:
        rows = conn.execute(
            select(jobs.c.id, jobs.c.kind).where(jobs.c.station_id == station_id, jobs.c.status == "running")
        ).all()
        conn.execute(
            update(jobs)
            .where(jobs.c.station_id == station_id, jobs.c.status == "running")
            .values(status="interrupted", finished_s=now_s, error="worker stopped while running")
        )
        readbacks = conn.execute(
            select(jobs.c.id, jobs.c.kind).where(
                jobs.c.station_id == station_id, jobs.c.status == "interrupted", jobs.c.kind != JOB_PROGRAM
            )
        ).all()
        return [(int(r.id), r.kind) for r in {*rows, *readbacks}]

    @staticmethod
    def requeue(conn: Connection, job_id: int) -> None:
        conn.execute(
            update(jobs).where(jobs.c.id == job_id).values(status="queued", finished_s=None, error=None)
        )

    @staticmethod
    def next_run_at(conn: Connection, station_id: int) -> float | None:
        found = conn.execute(
            select(jobs.c.run_at_s)
            .where(jobs.c.station_id == station_id, jobs.c.status == "queued")
            .order_by(jobs.c.run_at_s)
            .limit(1)
        ).scalar_one_or_none()
        return None if found is None else float(found)

    @staticmethod
    def heartbeat(
        conn: Connection,
        job_id: int,
        now_s: float,
        progress: float,
        message: str,
        checkpoint: dict[str, Any] | None,
    ) -> bool:
        values: dict[str, Any] = {
            "heartbeat_s": now_s,
            "progress": min(max(progress, 0.0), 1.0),
            "progress_message": message,
        }
        if checkpoint is not None:
            values["checkpoint"] = checkpoint
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
        cancel = conn.execute(select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar_one()
        return not cancel

    @staticmethod
    def complete(conn: Connection, job_id: int, now_s: float, result: dict[str, Any]) -> None:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(status="succeeded", finished_s=now_s, result=result, progress=1.0, checkpoint=None)
        )

    @staticmethod
    def finish(
        conn: Connection, job_id: int, status: str, now_s: float | None, error: str | None = None
    ) -> None:
        conn.execute(
            update(jobs).where(jobs.c.id == job_id).values(status=status, finished_s=now_s, error=error)
        )


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    payload: dict[str, Any]
    checkpoint: dict[str, Any] | None
