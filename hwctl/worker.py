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

from sqlalchemy import Engine, select

from drivers.errors import LinkError
from hwctl import queue
from hwctl.campaign import HANDLERS, READ_BLOCK_DEVICES, JobCancelled, JobContext, JobOvertaken, JobPaused
from hwctl.experiment_spec import JOB_READBACK
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


# This worker is its station's only owner, so at start every job still marked running
# is an orphan of a previous worker, however recent its heartbeat (a virtual clock may
# not have moved since): recover jobs of any age.
_ANY_AGE_S = -1e15


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
            recovery = queue.recover_on_start(self.engine, station_id, _ANY_AGE_S, station.clock_now_s())
            if recovery.interrupted or recovery.missed:
                log.warning("station %s recovered: %s", self.station_name, recovery)
            while not self.stop_event.is_set():
                now_s = station.clock_now_s()
                job = queue.claim(self.engine, station_id, now_s)
                if job is not None:
                    self._run_job(station, station_id, job)
                else:
                    self._wait_for_next(station, station_id, now_s)
        log.info("worker for station %s stopped; board left in its safe state", self.station_name)

    def _wait_for_next(self, station: Station, station_id: int, now_s: float) -> None:
        next_s = queue.next_run_at_s(self.engine, station_id)
        if next_s is not None and next_s > now_s and station.advance_to_s(next_s):
            return
        poll_s = self.options.poll_s
        self.stop_event.wait(poll_s if next_s is None else station.wall_delay_s(next_s - now_s, poll_s))

    def _overtaken(self, station: Station, station_id: int, job: queue.Job) -> bool:
        """Whether a readback scheduled later than `job` is due now (only readbacks yield).

        Compared by scheduled time, not `run_at_s`: a resumed readback is due "now" but
        keeps its place in the schedule, so two readbacks never hand the chip back and forth.
        """
        due = (
            select(jobs.c.payload)
            .where(jobs.c.station_id == station_id, jobs.c.status == "queued", jobs.c.kind == JOB_READBACK)
            .where(jobs.c.run_at_s <= station.clock_now_s())
        )
        with self.engine.connect() as conn:
            scheduled_s = [float(p["scheduled_s"]) for p in conn.execute(due).scalars()]
        return any(s > float(job.payload["scheduled_s"]) for s in scheduled_s)

    def _run_job(self, station: Station, station_id: int, job: queue.Job) -> None:
        def heartbeat(progress: float, message: str, checkpoint: dict[str, Any] | None) -> bool:
            now_s = station.clock_now_s()
            cancel = queue.heartbeat(
                self.engine, job.id, now_s, progress=progress, message=message, checkpoint=checkpoint
            )
            return not cancel

        ctx = JobContext(
            engine=self.engine, station=station, station_id=station_id, job_id=job.id, kind=job.kind,
            payload=job.payload, checkpoint=job.checkpoint, heartbeat=heartbeat,
            complete=lambda result: queue.complete(self.engine, job.id, station.clock_now_s(), result),
            stopping=self.stop_event.is_set, overtaken=lambda: self._overtaken(station, station_id, job),
            cache=self._cache,
            read_block_devices=self.options.read_block_devices,
        )  # fmt: skip
        log.info("station %s: %s job %d starts", self.station_name, job.kind, job.id)
        try:
            HANDLERS[job.kind](ctx)
        except JobCancelled:
            queue.acknowledge_cancel(self.engine, job.id, station.clock_now_s())
        except JobOvertaken:
            now_s = station.clock_now_s()
            queue.recover_stale(self.engine, station_id, _ANY_AGE_S, now_s)
            queue.resume(self.engine, job.id, now_s)  # due now, behind the readback that overtook it
        except JobPaused:
            # The last block is committed; the next start queues readbacks again and
            # leaves programming interrupted for an operator.
            queue.recover_stale(self.engine, station_id, _ANY_AGE_S, station.clock_now_s())
        except LinkError:
            # No board clock to stamp anything with: the job stays running, and the next
            # start recovers it (a readback resumes, programming waits for an operator).
            log.error("station %s: link lost during %s job %d", self.station_name, job.kind, job.id)
            raise
        except Exception as exc:
            log.exception("station %s: %s job %d failed", self.station_name, job.kind, job.id)
            queue.fail(self.engine, job.id, station.clock_now_s(), f"{type(exc).__name__}: {exc}")


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
