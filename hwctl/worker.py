"""The station worker: the one owner of a station's chip, running its jobs on the board clock.

API handlers never touch an instrument; they enqueue jobs. A worker per station claims
the due jobs and runs them (`hwctl.jobs`) in two lanes, one job at a time in each:
the chip lane (programming, readbacks) holds the driver; the compute lane (evaluation,
drift analysis) runs in a second thread that never touches the driver and reads the
station clock by extrapolating the chip lane's last reading, so a minute of CPU spent
on an evaluation never delays a due readback.

On start it recovers from a crash: jobs left running are queued again at their last
checkpoint. A programming resumes its run (every device re-read, program-and-verify
continued for those not yet within tolerance); a readback resumes from its last
committed block, a late one runs at once and records its actual time, and one past its
window is missed. A job interrupted `job_max_attempts` times fails instead, and a
programming's experiment with it, both saying why.
Between jobs it sleeps until the next due job, converting station seconds to wall
seconds by the clock rate it observes (or, on a virtual-clock chip, advances the board
to it).

Faults are part of the day. A link error, timeout or garbled reply never ends the
worker: the job goes back to its last checkpoint (after `job_max_attempts` runs in a row
without a new checkpoint it fails, and a programming's experiment with it), the board is
re-opened with exponential backoff (every attempt logged, the link state kept on the
station row), and work goes on when it answers. Each (re)connection checks the board: its
serial, that its clock did not go back, and that a sample of the programmed devices still
reads as the last stored values drifted (`Station.continuity`); a board that lost its
state puts the experiment in `board_state_lost` with the evidence, and its later readouts
are flagged. Database outages are ridden out: every statement is retried until it gets
through, the running job holding its data meanwhile.

A stop request (SIGTERM/SIGINT, or `Worker.stop`) is honoured at the next block; a
command that does not finish within `stop_grace_s` has its link aborted. The board is
left safe on every exit path where the link is alive (else its watchdog grounds it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Row
from sqlalchemy.exc import InterfaceError, OperationalError, PendingRollbackError

from drivers.errors import DriverError
from hwctl import queue
from hwctl.heap import summary_text
from hwctl.jobs import JOBS
from hwctl.jobs.context import (
    LINK_FAILURES,
    READ_BLOCK_DEVICES,
    JobCancelled,
    JobContext,
    JobOvertaken,
    JobPaused,
    LaneCache,
)
from hwctl.settings import Settings
from hwctl.station import DEFAULT_TIMEOUT_S, Station, StationIdentityError, open_station
from hwctl.store import queries, station_link
from hwctl.store.campaign import active_experiment_id, board_reference, fail_experiment, move_experiment
from hwctl.store.engine import make_engine
from hwctl.store.migrate import ensure_migrated
from hwctl.store.schema import utc_now
from hwctl.store.station_lock import StationBusyError, station_held
from hwctl.store.wakeup import Listener
from hwctl.vocabulary import ExperimentStatus, JobKind, JobLane

log = logging.getLogger(__name__)

T = TypeVar("T")
# What a database outage (server restart, dropped connection, SQLite lock storm) raises;
# PendingRollbackError: a statement on a connection such an outage invalidated.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PendingRollbackError)
# After these the board is re-opened (a board with another serial may be swapped back).
_REOPEN_AFTER: tuple[type[Exception], ...] = (*LINK_FAILURES, StationIdentityError)


@dataclass(frozen=True)
class WorkerOptions:
    poll_s: float = 0.5  # longest wall-clock sleep between looks at the queue
    read_block_devices: int = READ_BLOCK_DEVICES
    link_timeout_s: float = DEFAULT_TIMEOUT_S
    reconnect_initial_s: float = 0.5  # doubled after each failed re-open, up to reconnect_max_s
    reconnect_max_s: float = 30.0
    link_pause_after_s: float = 300.0  # a link down this long pauses the station's chip queue
    job_max_attempts: int = 5
    stop_grace_s: float = 1.5
    db_retry_max_s: float = 5.0
    worker_heartbeat_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings, **chosen: Any) -> WorkerOptions:
        """The deployment's settings, with `chosen` (command-line flags) on top."""
        names = ("link_timeout_s", "reconnect_initial_s", "reconnect_max_s", "link_pause_after_s",
                 "job_max_attempts", "stop_grace_s", "db_retry_max_s", "worker_heartbeat_s")  # fmt: skip
        return cls(**{name: getattr(settings, name) for name in names}, **chosen)


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
    cache: LaneCache = field(default_factory=LaneCache)


@dataclass
class _Link:
    """The supervisor's record of the link: down since when, after how many re-opens, and
    whether the station's queue is paused for it."""

    down_since: datetime | None = None
    attempts: int = 0
    paused: bool = False


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
        self._chip_wakeup = threading.Event()  # set when a job is queued for this station, or at stop
        self._chip_stopped = threading.Event()  # the chip lane has left the board
        self._station: Station | None = None  # the open station, for the stop watchdog
        self._clock: Station | None = None  # the last station opened: the compute lane's clock
        self._alive_at = 0.0  # monotonic s of the last worker heartbeat on the station row
        self._chip_thread: int | None = None  # the thread running the chip lane
        self._chip_in_database = False  # the chip lane waits for the database, not for the board
        # Job id -> its runs in a row that the link ended before a new checkpoint: a job
        # that gets further each time (a readback on a flapping link) never runs out.
        self._fruitless_runs: dict[int, int] = {}
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

    # -- the database, retried -------------------------------------------------------
    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """`attempt` until the database answers; a stop request ends the wait (the job's
        last committed checkpoint is where the next start goes on)."""
        if threading.get_ident() != self._chip_thread:
            return self._retried(what, attempt)
        waiting, self._chip_in_database = self._chip_in_database, True
        try:
            return self._retried(what, attempt)
        finally:
            self._chip_in_database = waiting

    def _retried(self, what: str, attempt: Callable[[], T]) -> T:
        delay_s = 0.05
        while True:
            try:
                return attempt()
            except DATABASE_UNAVAILABLE as exc:
                if self.stop_event.is_set():
                    raise
                log.warning("station %s: database unavailable while %s (%s); retrying in %.2f s",
                            self.station_name, what, type(getattr(exc, "orig", exc)).__name__,
                            delay_s)  # fmt: skip
                self.stop_event.wait(delay_s)
                delay_s = min(2 * delay_s, self.options.db_retry_max_s)

    def _write(self, what: str, body: Callable[[Connection], T]) -> T:
        def attempt() -> T:
            with queue.writing(self.engine) as conn:
                return body(conn)

        return self._retrying(what, attempt)

    # -- supervision: open, check, run, re-open ------------------------------------------
    def run(self) -> None:
        """Run both lanes until stopped, re-opening the board whenever its link fails.

        The chip lane runs in this thread, the compute lane in a second one; an error
        other than a link or database outage in either stops both (the board is made
        safe first) and is raised here. A second worker for the station is refused
        (`WorkerError`) before it touches the queue or the board.
        """
        try:
            row = self._retrying("looking up the station", self._station_row)
            with station_held(self.engine, int(row.id), self.station_name):
                self._run_held(row)
        except StationBusyError as exc:
            raise WorkerError(str(exc)) from None
        except DATABASE_UNAVAILABLE as exc:
            if not self.stop_event.is_set():
                raise
            # A stop during an outage: the board was made safe on the way out, and the job
            # under way stays running for the next start to recover at its checkpoint.
            log.warning("worker for station %s stopped while the database was unavailable (%s)",
                        self.station_name, type(getattr(exc, "orig", exc)).__name__)  # fmt: skip

    def _run_held(self, row: Row[Any]) -> None:
        """`run`, this worker alone holding the station (`hwctl.store.station_lock`)."""
        compute_errors: list[BaseException] = []
        compute = threading.Thread(
            target=self._compute_lane, args=(int(row.id), compute_errors),
            name=f"worker-{self.station_name}-compute", daemon=True,
        )  # fmt: skip
        threading.Thread(
            target=self._abort_when_stuck, name=f"worker-{self.station_name}-stop", daemon=True
        ).start()
        wakeups = (self._chip_wakeup, self._compute_wakeup)
        listener = Listener(self.engine, int(row.id), wakeups, self.stop_event).start()
        try:
            self._supervise(row, compute)
        finally:
            self._chip_stopped.set()
            self.stop_event.set()
            listener.join(self.options.stop_grace_s)
            if compute.is_alive():
                compute.join(self.options.stop_grace_s + self.options.poll_s)
        log.info("worker for station %s stopped", self.station_name)
        if compute_errors:
            raise compute_errors[0]

    def _station_row(self) -> Row[Any]:
        with self.engine.connect() as conn:
            row = queries.station_by_name(conn, self.station_name)
        if row is None:
            raise WorkerError(f"no station named {self.station_name!r}; register it first")
        return row

    def _supervise(self, row: Row[Any], compute: threading.Thread) -> None:
        station_id = int(row.id)
        self._chip_thread = threading.get_ident()
        link = _Link()
        recovered = False
        while not self.stop_event.is_set():
            if link.down_since is not None and not self._back_off(station_id, link):
                return
            try:
                station = open_station(
                    row.name, row.resource, timeout_s=self.options.link_timeout_s,
                    advances_clock=row.clock_kind == "virtual",
                )  # fmt: skip
            except (DriverError, OSError) as exc:
                self._link_failed(station_id, link, f"cannot open {row.resource}: {exc}")
                continue
            try:
                with station:
                    self._station = self._clock = station
                    station.check(row.chip_serial)
                    if not recovered:
                        self._recover(station_id, station.clock_now_s())
                        recovered = True
                    self._check_continuity(station, station_id)
                    if link.down_since is not None:
                        log.info("station %s: link up again after %d attempts%s", self.station_name,
                                 link.attempts, "; queue resumed" if link.paused else "")  # fmt: skip
                    link = _Link()
                    self._write("recording the link up", lambda conn: station_link.link_up(conn, station_id))
                    if not compute.is_alive():
                        compute.start()
                    self._chip_lane(station, station_id)
                log.info("worker for station %s: board left in its safe state", self.station_name)
                return
            except _REOPEN_AFTER as exc:
                if self.stop_event.is_set():
                    return
                self._link_failed(station_id, link, str(exc))
            finally:
                self._station = None

    def _recover(self, station_id: int, now_s: float) -> None:
        """Queue the previous worker's jobs again at their checkpoints (see `queue.recover_on_start`)."""
        recovery = self._retrying("recovering the queue", lambda: queue.recover_on_start(
            self.engine, station_id, _ANY_AGE_S, now_s, max_attempts=self.options.job_max_attempts,
            give_up=_give_up,
        ))  # fmt: skip
        if recovery.interrupted or recovery.missed or recovery.failed:
            log.warning("station %s recovered: %s", self.station_name, recovery)

    def _link_failed(self, station_id: int, link: _Link, reason: str) -> None:
        """Record the failure; once the link has been down `link_pause_after_s` the queue is
        paused: readbacks that pass their window meanwhile are missed, saying why."""
        now = utc_now()
        link.down_since = link.down_since or now
        link.attempts += 1
        since, attempts = link.down_since, link.attempts
        down_for_s = (now - since).total_seconds()
        log.warning("station %s: link down since %s (attempt %d): %s", self.station_name,
                    since.isoformat(timespec="seconds"), attempts, reason)  # fmt: skip
        if not link.paused and down_for_s >= self.options.link_pause_after_s:
            link.paused = True
            log.error("station %s: link down for %.1f s: queue paused until the board answers",
                      self.station_name, down_for_s)  # fmt: skip
        paused = link.paused
        self._write(
            "recording the link down",
            lambda conn: station_link.link_down(conn, station_id, since, attempts, paused),
        )
        if paused and self._clock is not None:
            now_s = self._clock.estimated_now_s()
            why = f"link down since {since.isoformat(timespec='seconds')}"
            missed = self._retrying(
                "missing readbacks",
                lambda: queue.mark_missed(self.engine, station_id, now_s, why, JobLane.CHIP),
            )
            if missed:
                log.warning("station %s: jobs %s missed: %s", self.station_name, missed, why)

    def _back_off(self, station_id: int, link: _Link) -> bool:
        """Wait before the next re-open (exponential backoff, the longest once the queue is
        paused); False if stopped meanwhile."""
        delay_s = min(
            self.options.reconnect_initial_s * 2 ** (link.attempts - 1), self.options.reconnect_max_s
        )
        if link.paused:
            delay_s = self.options.reconnect_max_s
        log.info("station %s: re-opening the board in %.2f s", self.station_name, delay_s)
        return not self.stop_event.wait(delay_s)

    def _check_continuity(self, station: Station, station_id: int) -> None:
        """A board that lost its devices' state or its clock puts the station's experiment
        in `board_state_lost`, with the evidence."""
        last_seen_s = self._retrying(
            "reading the board's last time", lambda: queue.last_board_time_s(self.engine, station_id)
        )
        reference = self._retrying(
            "reading the board's reference", lambda: self._read(lambda c: board_reference(c, station_id))
        )
        continuity = station.continuity(last_seen_s, reference)
        if not continuity.lost:
            log.info("station %s: board checked: %s", self.station_name, continuity.evidence())
            return
        experiment_id = self._retrying(
            "finding the active experiment", lambda: self._read(lambda c: active_experiment_id(c, station_id))
        )
        reason = f"board state lost: {continuity.evidence()}"
        log.error("station %s: %s (experiment %s)", self.station_name, reason, experiment_id)
        if experiment_id is not None:
            self._write("flagging the experiment", lambda conn: move_experiment(
                conn, experiment_id, ExperimentStatus.BOARD_STATE_LOST, reason
            ))  # fmt: skip

    def _read(self, body: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            return body(conn)

    def _abort_when_stuck(self) -> None:
        """After a stop request, give the chip lane `stop_grace_s` to reach a safe point,
        then abort the command in flight (a link blocked on I/O). A chip lane waiting for a
        locked or absent database is not aborted: its link is alive, and it stops with the
        board made safe once its wait ends (SQLite's busy timeout, or a retry seeing the stop)."""
        self.stop_event.wait()
        while not self._chip_stopped.wait(self.options.stop_grace_s):
            if self._chip_in_database:
                continue
            station = self._station
            if station is not None:
                log.warning("station %s: stop requested; aborting the command in flight", self.station_name)
                station.chip.abort()
            return

    # -- the lanes ----------------------------------------------------------------------
    def _chip_lane(self, station: Station, station_id: int) -> None:
        lane = _Lane(JobLane.CHIP, station.clock_now_s, station)
        while not self.stop_event.is_set():
            self._heartbeat_if_due(station_id)
            now_s = station.clock_now_s()
            self._chip_wakeup.clear()  # before the look, so no wake-up is lost
            job = self._claim(station_id, now_s, JobLane.CHIP)
            if job is None:
                self._chip_wait(station, station_id, now_s)
                continue
            try:
                self._run_recorded(lane, station_id, job)
            finally:
                self._compute_wakeup.set()  # it may have queued an evaluation or the analysis

    def _heartbeat_if_due(self, station_id: int) -> None:
        if self._alive_due():
            self._write(
                "recording the worker alive", lambda conn: station_link.worker_alive(conn, station_id)
            )

    def _alive_due(self) -> bool:
        """Whether the station row's worker heartbeat is due (then it counts as written)."""
        now = time.monotonic()
        if now - self._alive_at < self.options.worker_heartbeat_s:
            return False
        self._alive_at = now
        return True

    def _chip_wait(self, station: Station, station_id: int, now_s: float) -> None:
        """Sleep until the next job of either lane falls due, or a job is queued (a wake-up,
        `hwctl.store.wakeup`); a virtual clock is moved there."""
        next_s = self._retrying(
            "looking at the queue", lambda: queue.next_run_at_s(self.engine, station_id, after_s=now_s)
        )
        if next_s is not None and station.advance_to_s(next_s):
            return
        poll_s = self.options.poll_s
        self._chip_wakeup.wait(poll_s if next_s is None else station.wall_delay_s(next_s - now_s, poll_s))

    def _compute_now_s(self) -> float:
        """The board time as the chip lane last saw it, extrapolated (never a word to the board)."""
        station = self._clock
        if station is None:
            raise WorkerError("the compute lane started before any station was opened")
        return station.estimated_now_s()

    def _compute_lane(self, station_id: int, errors: list[BaseException]) -> None:
        """Claim and run compute jobs until stopped; an error stops the whole worker."""
        lane = _Lane(JobLane.COMPUTE, self._compute_now_s, None)
        try:
            while not self.stop_event.is_set():
                self._compute_wakeup.clear()  # before the look, so no wake-up is lost
                job = self._claim_if_due(lane, station_id)
                if job is not None:
                    self._run_recorded(lane, station_id, job)
                else:
                    self._compute_wakeup.wait(self.options.poll_s)
        except BaseException as exc:
            if self.stop_event.is_set() and isinstance(exc, DATABASE_UNAVAILABLE):
                return  # stopped during an outage: the job is recovered at the next start
            log.exception("worker for station %s: compute lane stopped on an error", self.station_name)
            errors.append(exc)
            self.stop_event.set()

    def _claim_if_due(self, lane: _Lane, station_id: int) -> queue.Job | None:
        """Claim only when a read says a job is due: a claim takes SQLite's write lock, which
        the chip lane's commits would otherwise queue behind at every poll."""
        now_s = lane.now_s()
        due_s = self._retrying(
            "looking at the queue", lambda: queue.next_run_at_s(self.engine, station_id, lane.name)
        )
        if due_s is None or due_s > now_s:
            return None
        return self._claim(station_id, now_s, lane.name)

    def _claim(self, station_id: int, now_s: float, lane: str) -> queue.Job | None:
        return self._retrying("claiming a job", lambda: queue.claim(self.engine, station_id, now_s, lane))

    def _overtaken(self, station: Station, station_id: int, job: queue.Job) -> bool:
        """Whether a readback scheduled later than `job` is due now (only readbacks yield)."""
        if job.scheduled_s is None:
            return False
        now_s = station.clock_now_s()
        scheduled_s = job.scheduled_s
        return self._retrying(
            "looking for a later readback",
            lambda: queue.later_readback_due(self.engine, station_id, now_s, scheduled_s),
        )

    def _run_recorded(self, lane: _Lane, station_id: int, job: queue.Job) -> None:
        """Run a job and record its outcome; a job whose row was moved on meanwhile (the
        user cancelled it between two looks) keeps the state it was given, and the worker
        goes on with the next job instead of stopping on the refused transition."""
        try:
            self._run_job(lane, station_id, job)
        except queue.JobStateError as exc:
            log.warning(
                "station %s: %s job %d changed state under the worker, outcome not recorded: %s",
                self.station_name, job.kind, job.id, exc,
            )  # fmt: skip
        finally:
            name, kind = self.station_name, job.kind
            log.info("station %s: %s job %d over, memory %s", name, kind, job.id, summary_text())

    def _run_job(self, lane: _Lane, station_id: int, job: queue.Job) -> None:
        progressed = False  # a checkpoint other than the one the job started from was committed

        def heartbeat(
            progress: float, message: str, checkpoint: dict[str, Any] | None,
            write: Callable[[Connection], None] | None,
        ) -> bool:  # fmt: skip
            nonlocal progressed
            now_s = lane.now_s()

            alive = self._alive_due()  # a job may run for minutes between the lane's looks

            def commit(conn: Connection) -> bool:
                if write is not None:
                    write(conn)
                if alive:
                    station_link.worker_alive(conn, station_id)
                return queue.heartbeat_in(
                    conn, job.id, now_s, progress=progress, message=message, checkpoint=checkpoint
                )

            go_on = not self._write("committing a checkpoint", commit)
            progressed = progressed or (checkpoint is not None and checkpoint != job.checkpoint)
            return go_on

        def complete(result: dict[str, Any]) -> None:
            now_s = lane.now_s()
            self._retrying("completing the job", lambda: queue.complete(self.engine, job.id, now_s, result))

        station = lane.station
        ctx = JobContext(
            engine=self.engine, station=station, station_id=station_id, job_id=job.id, kind=job.kind,
            checkpoint=job.checkpoint, heartbeat=heartbeat, complete=complete,
            stopping=self.stop_event.is_set,
            overtaken=lambda: station is not None and self._overtaken(station, station_id, job),
            retrying=self._retrying, cache=lane.cache, read_block_devices=self.options.read_block_devices,
        )  # fmt: skip
        log.info(
            "station %s: %s job %d starts in the %s lane (attempt %d), memory %s",
            self.station_name, job.kind, job.id, lane.name, job.attempts, summary_text(),
        )  # fmt: skip
        job_type = JOBS[JobKind(job.kind)]
        try:
            job_type.handle(ctx, job_type.payload.model_validate(job.payload))
        except JobCancelled:
            now_s = lane.now_s()
            self._retrying(
                "acknowledging the cancel", lambda: queue.acknowledge_cancel(self.engine, job.id, now_s)
            )
        except JobOvertaken:
            now_s = lane.now_s()

            def yield_chip() -> None:
                queue.recover_stale(self.engine, station_id, _ANY_AGE_S, now_s, job.lane)
                queue.resume(self.engine, job.id, now_s)  # due now, behind the readback that overtook it

            self._retrying("handing the chip over", yield_chip)
        except JobPaused:
            # The last block is committed; the next start queues the job again there.
            now_s = lane.now_s()
            self._retrying(
                "pausing the job",
                lambda: queue.recover_stale(self.engine, station_id, _ANY_AGE_S, now_s, job.lane),
            )
        except LINK_FAILURES as exc:
            reason = f"link lost during attempt {job.attempts}: {exc}"
            self._link_lost_during(job, station, reason, progressed)
            raise
        except DATABASE_UNAVAILABLE as exc:
            if self.stop_event.is_set():
                raise  # the job stays running and the next start recovers it
            # A statement of the handler's own met the outage: the job goes back to its
            # last checkpoint once the database answers (nothing after it was committed).
            reason = f"database unavailable during attempt {job.attempts}: {type(exc).__name__}"
            log.warning("station %s: %s job %d: %s", self.station_name, job.kind, job.id, reason)
            self._retrying("requeueing the job", lambda: queue.requeue(self.engine, job.id, reason))
        except Exception as exc:
            log.exception("station %s: %s job %d failed", self.station_name, job.kind, job.id)
            now_s = lane.now_s()
            error = f"{type(exc).__name__}: {exc}"
            self._retrying("failing the job", lambda: queue.fail(self.engine, job.id, now_s, error))

    def _link_lost_during(
        self, job: queue.Job, station: Station | None, reason: str, progressed: bool
    ) -> None:
        """The job goes back to its last checkpoint, or gives up after `job_max_attempts`
        runs in a row that ended without a new checkpoint (a programming's experiment with
        it); stopping, it waits for the next start."""
        now_s = station.estimated_now_s() if station is not None else 0.0  # the link is gone
        log.error("station %s: %s job %d: %s", self.station_name, job.kind, job.id, reason)
        fruitless = 0 if progressed else self._fruitless_runs.get(job.id, 0) + 1
        self._fruitless_runs[job.id] = fruitless
        if self.stop_event.is_set():
            self._retrying(
                "pausing the job",
                lambda: queue.recover_stale(self.engine, job.station_id, _ANY_AGE_S, now_s, job.lane),
            )
        elif fruitless < self.options.job_max_attempts:
            self._retrying("requeueing the job", lambda: queue.requeue(self.engine, job.id, reason))
        else:
            given_up = (
                f"{job.kind} job {job.id}: {reason}; gave up after {job.attempts} attempts, "
                f"the last {fruitless} without progress"
            )

            def fail(conn: Connection) -> None:
                queue.fail_in(conn, job.id, now_s, given_up)
                _give_up(conn, job, given_up)

            self._write("failing the job", fail)


def _give_up(conn: Connection, job: queue.Job, reason: str) -> None:
    """A job out of attempts ends its experiment too when the experiment cannot go on
    without it (a programming)."""
    if JOBS[JobKind(job.kind)].fails_experiment and job.experiment_id is not None:
        fail_experiment(conn, job.experiment_id, reason)


def run_worker(
    settings: Settings,
    station_name: str,
    stop_event: threading.Event | None = None,
    options: WorkerOptions | None = None,
) -> None:
    """The worker process body: connect, refuse an unmigrated database, run until stopped.

    Connections are checked before use (`pool_pre_ping`), so one left dead by a database
    restart is replaced instead of failing the next statement.
    """
    engine = make_engine(
        settings.database_url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms, pool_pre_ping=True
    )
    try:
        ensure_migrated(engine)
        Worker(engine, station_name, options or WorkerOptions.from_settings(settings), stop_event).run()
    finally:
        engine.dispose()
