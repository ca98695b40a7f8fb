"""The station worker: the one owner of a station's chip, running its jobs on the board clock.

API handlers never touch an instrument; they enqueue jobs. A worker per station claims
the due jobs and runs them (`hwctl.jobs`) in two lanes, one job at a time in each:
the chip lane (programming, readbacks) holds the driver; the compute lane (evaluation,
drift analysis) runs in a second thread that never touches the driver and reads the
station clock by extrapolating the chip lane's last reading, so a minute of CPU spent
on an evaluation never delays a due readback. On start it recovers from
a crash: jobs left running become interrupted; programming stays interrupted (the
chip's state is unknown: an operator decides), readbacks are queued again and resume
from their last committed block, late ones run at once and record their actual time,
and those past their window are missed. Between jobs it sleeps until the next due job,
converting station seconds to wall seconds by the clock rate it observes (or, on a
virtual-clock chip, advances the board to it). A stop request (SIGTERM/SIGINT, or
`Worker.stop`) is honoured at the next block; the board is left safe on every exit
path, and only then does the worker wait for the compute lane's next safe point.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, select

from drivers.errors import LinkError
from hwctl import queue
from hwctl.jobs import JOBS
from hwctl.jobs.context import READ_BLOCK_DEVICES, JobCancelled, JobContext, JobOvertaken, JobPaused
from hwctl.settings import Settings
from hwctl.station import DEFAULT_TIMEOUT_S, Station, open_station
from hwctl.store.engine import make_engine
from hwctl.store.migrate import ensure_migrated
from hwctl.store.schema import stations
from hwctl.vocabulary import JobKind, JobLane

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    poll_s: float = 0.5  # longest wall-clock sleep between looks at the queue
    read_block_devices: int = READ_BLOCK_DEVICES
    link_timeout_s: float = DEFAULT_TIMEOUT_S


# This worker is its station's only owner, so at start every job still marked running
# is an orphan of a previous worker, however recent its heartbeat (a virtual clock may
# not have moved since): recover jobs of any age.
_ANY_AGE_S = -1e15


class WorkerError(RuntimeError):
    """The worker cannot run for this station (unknown station, unusable resource)."""


@dataclass
class _Lane:
    """One lane's view of the station: its clock, its chip (None: never touches it), its cache."""

    name: str
    now_s: Callable[[], float]
    station: Station | None
    cache: dict[Any, Any] = field(default_factory=dict)


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
        self._compute_wakeup = threading.Event()  # set when the chip lane may have queued work
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

    # -- the lanes ----------------------------------------------------------------------
    def run(self) -> None:
        """Open the station, recover, then run both lanes until stopped.

        The chip lane runs in this thread, the compute lane in a second one; an error in
        either stops both (the board is made safe first) and is raised here.
        """
        with self.engine.connect() as conn:
            row = conn.execute(select(stations).where(stations.c.name == self.station_name)).one_or_none()
        if row is None:
            raise WorkerError(f"no station named {self.station_name!r}; register it first")
        station_id = int(row.id)
        compute: threading.Thread | None = None
        compute_errors: list[BaseException] = []
        try:
            with open_station(
                row.name, row.resource, timeout_s=self.options.link_timeout_s,
                advances_clock=row.clock_kind == "virtual",
            ) as station:  # fmt: skip
                station.check(row.chip_serial)
                recovery = queue.recover_on_start(self.engine, station_id, _ANY_AGE_S, station.clock_now_s())
                if recovery.interrupted or recovery.missed:
                    log.warning("station %s recovered: %s", self.station_name, recovery)
                lane = _Lane(JobLane.COMPUTE, station.estimated_now_s, None)
                compute = threading.Thread(
                    target=self._compute_lane, args=(lane, station_id, compute_errors),
                    name=f"worker-{self.station_name}-compute", daemon=True,
                )  # fmt: skip
                compute.start()
                self._chip_lane(station, station_id)
            log.info("worker for station %s: board left in its safe state", self.station_name)
        finally:
            self.stop_event.set()
            if compute is not None:
                compute.join()
        log.info("worker for station %s stopped", self.station_name)
        if compute_errors:
            raise compute_errors[0]

    def _chip_lane(self, station: Station, station_id: int) -> None:
        lane = _Lane(JobLane.CHIP, station.clock_now_s, station)
        while not self.stop_event.is_set():
            now_s = station.clock_now_s()
            job = queue.claim(self.engine, station_id, now_s, JobLane.CHIP)
            if job is None:
                self._chip_wait(station, station_id, now_s)
                continue
            try:
                self._run_job(lane, station_id, job)
            finally:
                self._compute_wakeup.set()  # it may have queued an evaluation or the analysis

    def _chip_wait(self, station: Station, station_id: int, now_s: float) -> None:
        """Sleep until the next job of either lane falls due; a virtual clock is moved there."""
        next_s = queue.next_run_at_s(self.engine, station_id, after_s=now_s)
        if next_s is not None and station.advance_to_s(next_s):
            return
        poll_s = self.options.poll_s
        self.stop_event.wait(poll_s if next_s is None else station.wall_delay_s(next_s - now_s, poll_s))

    def _compute_lane(self, lane: _Lane, station_id: int, errors: list[BaseException]) -> None:
        """Claim and run compute jobs until stopped; an error stops the whole worker."""
        try:
            while not self.stop_event.is_set():
                self._compute_wakeup.clear()  # before the look, so no wake-up is lost
                job = self._claim_if_due(lane, station_id)
                if job is not None:
                    self._run_job(lane, station_id, job)
                else:
                    self._compute_wakeup.wait(self.options.poll_s)
        except BaseException as exc:
            log.exception("worker for station %s: compute lane stopped on an error", self.station_name)
            errors.append(exc)
            self.stop_event.set()

    def _claim_if_due(self, lane: _Lane, station_id: int) -> queue.Job | None:
        """Claim only when a read says a job is due: a claim takes SQLite's write lock, which
        the chip lane's commits would otherwise queue behind at every poll."""
        now_s = lane.now_s()
        due_s = queue.next_run_at_s(self.engine, station_id, lane.name)
        if due_s is None or due_s > now_s:
            return None
        return queue.claim(self.engine, station_id, now_s, lane.name)

    def _overtaken(self, station: Station, station_id: int, job: queue.Job) -> bool:
        """Whether a readback scheduled later than `job` is due now (only readbacks yield)."""
        if job.scheduled_s is None:
            return False
        return queue.later_readback_due(self.engine, station_id, station.clock_now_s(), job.scheduled_s)

    def _run_job(self, lane: _Lane, station_id: int, job: queue.Job) -> None:
        def heartbeat(
            progress: float, message: str, checkpoint: dict[str, Any] | None,
            write: Callable[[Connection], None] | None,
        ) -> bool:  # fmt: skip
            with queue.writing(self.engine) as conn:
                if write is not None:
                    write(conn)
                cancel = queue.heartbeat_in(
                    conn, job.id, lane.now_s(), progress=progress, message=message, checkpoint=checkpoint
                )
            return not cancel

        station = lane.station
        ctx = JobContext(
            engine=self.engine, station=station, station_id=station_id, job_id=job.id, kind=job.kind,
            checkpoint=job.checkpoint, heartbeat=heartbeat,
            complete=lambda result: queue.complete(self.engine, job.id, lane.now_s(), result),
            stopping=self.stop_event.is_set,
            overtaken=lambda: station is not None and self._overtaken(station, station_id, job),
            cache=lane.cache,
            read_block_devices=self.options.read_block_devices,
        )  # fmt: skip
        log.info(
            "station %s: %s job %d starts in the %s lane", self.station_name, job.kind, job.id, lane.name
        )
        try:
            job_type = JOBS[JobKind(job.kind)]
            job_type.handle(ctx, job_type.payload.model_validate(job.payload))
        except JobCancelled:
            queue.acknowledge_cancel(self.engine, job.id, lane.now_s())
        except JobOvertaken:
            now_s = lane.now_s()
            queue.recover_stale(self.engine, station_id, _ANY_AGE_S, now_s, job.lane)
            queue.resume(self.engine, job.id, now_s)  # due now, behind the readback that overtook it
        except JobPaused:
            # The last block is committed; the next start queues readbacks and compute
            # jobs again and leaves programming interrupted for an operator.
            queue.recover_stale(self.engine, station_id, _ANY_AGE_S, lane.now_s(), job.lane)
        except LinkError:
            # No board clock to stamp anything with: the job stays running, and the next
            # start recovers it (a readback resumes, programming waits for an operator).
            log.error("station %s: link lost during %s job %d", self.station_name, job.kind, job.id)
            raise
        except Exception as exc:
            log.exception("station %s: %s job %d failed", self.station_name, job.kind, job.id)
            queue.fail(self.engine, job.id, lane.now_s(), f"{type(exc).__name__}: {exc}")


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
