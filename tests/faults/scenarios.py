"""The fault scenarios, shared by the test suite (CI scale) and `benchmarks.faults` (the
issue's scale): one campaign per scenario, one fault placed in it, and the verdict.

A run: the bench comes up (chip, proxy, worker), a campaign is submitted through the API,
the fault is placed at its phase (mid-programming, or mid-way through the third readback,
seen in the store from outside), the lab recovers on its own, the campaign settles, the
worker gets SIGTERM, and the store is audited (`tests.faults.audit`). The API is polled
all along. Every expectation that is not met becomes one sentence in `problems`, with
the log lines that explain it in `evidence`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC
from functools import partial
from typing import Any, Self

import httpx
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError

from hwctl.store.schema import jobs, stations
from hwctl.vocabulary import ExperimentStatus, JobKind, JobStatus
from tests.faults.audit import Audit, audit_campaign, settled, work_signature
from tests.faults.lab import (
    STARTUP_S,
    Bench,
    Lab,
    LabError,
    WorkerScale,
    patiently,
    restart_postgresql,
    wait_until,
)

READBACK_CUT = 2  # the fault lands in the third readback: readouts before and after it
# How long after the watchdog's period a board may still be unsafe: its check runs every
# min(1 s, period/4), plus a second for the chip's process to be scheduled on a busy machine.
WATCHDOG_SLACK = 0.25
WATCHDOG_SLACK_S = 1.0
RECOVERY_TARGET_S = 5.0  # issue 9: work goes on within this long after the link is back
FLAPS = 6  # link resets during one readback: more than the default job_max_attempts (5)


@dataclass(frozen=True)
class ReadbackProgress:
    """The cut readback under way: the job's attempt (counted at each claim) and the devices
    it has committed so far."""

    attempt: int
    next_device: int


@dataclass(frozen=True)
class Scale:
    """How long and how patient one run is."""

    offsets_s: tuple[float, ...]  # the readback schedule
    clock: str  # the chip's clock: virtual (the worker jumps it) or real
    outage_s: float  # how long a link stays cut, a board or a worker stays dead
    watchdog_s: float  # the chip's watchdog period
    worker: WorkerScale
    settle_timeout_s: float  # the campaign's end, after the fault


# CI: a virtual clock (the schedule takes no waiting), impatient links, a short outage.
CI_SCALE = Scale(
    offsets_s=(25.0, 50.0, 100.0, 200.0, 400.0, 800.0), clock="virtual", outage_s=3.5, watchdog_s=1.5,
    worker=WorkerScale(settings=(
        ("link_timeout_s", 1.5), ("reconnect_initial_s", 0.1), ("reconnect_max_s", 0.5),
        ("worker_heartbeat_s", 0.5), ("db_retry_max_s", 0.5), ("stop_grace_s", 1.0),
    )),
    settle_timeout_s=90.0,
)  # fmt: skip
# The issue's targets: a real clock, 10 s outages, the worker on the deployment's defaults.
ISSUE_SCALE = Scale(
    offsets_s=(5.0, 10.0, 15.0, 20.0, 25.0, 30.0), clock="real", outage_s=10.0, watchdog_s=5.0,
    worker=WorkerScale(), settle_timeout_s=240.0,
)  # fmt: skip


class _Sampler:
    """Runs `_sample` in a daemon thread from `start` until `stop` (both samplers below)."""

    _stop: threading.Event
    _thread: threading.Thread

    def start(self) -> Self:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _sample(self) -> None:
        raise NotImplementedError


@dataclass
class ApiPoller(_Sampler):
    """Asks the API about the campaign every `period_s` while the run goes on; every answer
    is kept (monotonic time, path, status code or the error's name)."""

    lab: Lab
    paths: list[str]
    period_s: float = 0.2
    answers: list[tuple[float, str, int | str]] = field(default_factory=list)

    def _sample(self) -> None:
        with httpx.Client(base_url=self.lab.api_url, timeout=10.0) as http:
            while not self._stop.wait(self.period_s):
                for path in self.paths:
                    try:
                        answer: int | str = http.get(path).status_code
                    except httpx.HTTPError as exc:
                        answer = type(exc).__name__
                    self.answers.append((time.monotonic(), path, answer))

    def failures_after(self, t_s: float, outages: list[tuple[float, float]]) -> list[str]:
        """Answers after `t_s` that are server errors or no answer at all; a 503 is the
        designed answer of a health probe, and of any request while the database is out
        (`outages`: another test may restart the shared server)."""
        bad = []
        for at_s, path, answer in self.answers:
            if at_s < t_s:
                continue
            during_outage = any(start_s <= at_s <= end_s for start_s, end_s in outages)
            designed = answer == 503 and (path.startswith("/health") or during_outage)
            if isinstance(answer, str) or (answer >= 500 and not designed):
                bad.append(f"{path}: {answer} at +{at_s - t_s:.2f} s")
        return bad


@dataclass
class WorkWatcher(_Sampler):
    """Samples the campaign's `work_signature` every `period_s` (None while the database does
    not answer), so recovery is timed from the samples whatever happens meanwhile."""

    engine: Engine
    experiment_id: int
    period_s: float = 0.02
    samples: list[tuple[float, tuple[Any, ...] | None]] = field(default_factory=list)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                signature: tuple[Any, ...] | None = work_signature(self.engine, self.experiment_id)
            except DBAPIError:  # the database restarts
                signature = None
            self.samples.append((time.monotonic(), signature))
            self._stop.wait(self.period_s)

    def outages(self) -> list[tuple[float, float]]:
        """(from, to) of each stretch the database did not answer: from the last sample that
        answered before it to the first that answered after (or now)."""
        stretches: list[tuple[float, float]] = []
        last_answer_s = float("-inf")
        start_s: float | None = None
        for at_s, signature in self.samples:
            if signature is None and start_s is None:
                start_s = last_answer_s
            elif signature is not None:
                if start_s is not None:
                    stretches.append((start_s, at_s))
                    start_s = None
                last_answer_s = at_s
        if start_s is not None:
            stretches.append((start_s, float("inf")))
        return stretches

    def answering_again_s(self, after_s: float) -> float | None:
        """The first sample after `after_s` that followed one where the database did not answer."""
        silent = False
        for at_s, signature in self.samples:
            if at_s < after_s:
                continue
            if signature is None:
                silent = True
            elif silent:
                return at_s
        return None

    def moved_after_s(self, back_s: float) -> float | None:
        """Seconds from `back_s` to the first sample whose work differs from the last one
        before `back_s`; None if the campaign never moved again."""
        before = [signature for at_s, signature in self.samples if at_s < back_s and signature is not None]
        if not before:
            return None
        for at_s, signature in self.samples:
            if at_s >= back_s and signature is not None and signature != before[-1]:
                return at_s - back_s
        return None


class Run:
    """One scenario's campaign on one bench: the timeline and what was seen along it."""

    def __init__(self, scenario: Scenario, lab: Lab, bench: Bench, scale: Scale) -> None:
        self.scenario = scenario
        self.lab = lab
        self.bench = bench
        self.scale = scale
        self.engine: Engine = lab.engine
        self.experiment_id = 0
        self.t_fault_s = 0.0
        self.t_back_s = 0.0
        self.problems: list[str] = []
        self.observed: dict[str, Any] = {}
        self.watcher: WorkWatcher | None = None
        self.t_start_s = time.monotonic()
        self.timeline_s: dict[str, float] = {}

    def mark(self, event: str, at_s: float | None = None) -> None:
        """When `event` happened (monotonic `at_s`, default now), in seconds since the bench
        started: the report's timeline."""
        self.timeline_s[event] = round((time.monotonic() if at_s is None else at_s) - self.t_start_s, 2)

    def expect(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)

    # -- where the fault lands ----------------------------------------------------------
    def _job(self, kind: JobKind, index: int = 0) -> Any:
        query = select(jobs.c.status, jobs.c.progress_message, jobs.c.checkpoint, jobs.c.attempts).where(
            jobs.c.experiment_id == self.experiment_id, jobs.c.kind == kind
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(jobs.c.scheduled_s, jobs.c.id)).all()
        return rows[index] if len(rows) > index else None

    def in_phase(self) -> bool:
        try:
            return self._in_phase()
        except DBAPIError:  # a restart of the shared server (another test's): look again
            return False

    def _in_phase(self) -> bool:
        if self.scenario.phase == "programming":
            job = self._job(JobKind.PROGRAM)
            return bool(
                job and job.status == JobStatus.RUNNING and job.progress_message.startswith("iteration")
            )
        job = self._job(JobKind.READBACK, READBACK_CUT)
        return bool(
            job and job.status == JobStatus.RUNNING and (job.checkpoint or {}).get("next_device", 0) > 0
        )

    def readback_progress(self) -> ReadbackProgress | None:
        """Where the cut readback stands; None once it is no longer under way."""
        job = patiently("looking at the readback", lambda: self._job(JobKind.READBACK, READBACK_CUT))
        if job is None or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            return None
        return ReadbackProgress(int(job.attempts), int((job.checkpoint or {}).get("next_device", 0)))

    def wait_for_readback(
        self, condition: Callable[[ReadbackProgress], bool], what: str
    ) -> ReadbackProgress | None:
        """The cut readback's progress once `condition` holds; None once it is no longer under way."""
        seen: list[ReadbackProgress | None] = []

        def reached() -> bool:
            seen.append(self.readback_progress())
            return seen[-1] is None or condition(seen[-1])

        wait_until(reached, what, STARTUP_S, poll_s=0.005)
        return seen[-1]

    # -- the fault's timeline -----------------------------------------------------------
    def fault_starts(self) -> None:
        self.t_fault_s = time.monotonic()
        self.mark("fault")

    def sleep_until(self, after_fault_s: float) -> None:
        time.sleep(max(0.0, self.t_fault_s + after_fault_s - time.monotonic()))

    def check_board_goes_safe(self) -> None:
        """Nobody drives the board now: its watchdog must have made it safe within its period."""
        self.sleep_until(self.scale.watchdog_s * (1 + WATCHDOG_SLACK) + WATCHDOG_SLACK_S)
        safe = self.bench.chip.probe.is_safe()
        self.observed["safe_within_watchdog"] = safe
        self.expect(
            safe, f"the board was not safe {self.scale.watchdog_s:g} s (its watchdog) after the fault"
        )

    def check_link_seen_down(self) -> None:
        def link_row() -> Any:
            with self.engine.connect() as conn:
                return conn.execute(select(stations.c.link_state, stations.c.link_attempts)
                                    .where(stations.c.name == self.bench.name)).one()  # fmt: skip

        state = patiently("reading the station row", link_row)
        self.observed["link_row_during_outage"] = f"{state.link_state} ({state.link_attempts} attempts)"
        self.expect(
            state.link_state == "down", f"station row says link {state.link_state!r} during the outage"
        )

    def fault_ends(self, database: bool = False) -> None:
        """The fault is over; for the database, from the moment it answered again (a restart
        command returns a little after the server accepts connections)."""
        self.t_back_s = time.monotonic()
        if database and self.watcher is not None:
            self.t_back_s = self.watcher.answering_again_s(self.t_fault_s) or self.t_back_s
        self.mark("back", self.t_back_s)


Fault = Callable[[Run], None]


def link_drop(run: Run) -> None:
    """The cable is pulled (bytes vanish, no FIN, no RST) for the outage, then plugged back."""
    run.bench.link.blackhole()
    run.fault_starts()
    run.check_board_goes_safe()
    run.sleep_until(run.scale.outage_s)
    run.check_link_seen_down()
    run.bench.link.resume()
    run.fault_ends()


def link_flapping(run: Run) -> None:
    """The link resets (RST) again each time the readback under way got one block further,
    `FLAPS` times: more cuts than a job has attempts, each one after progress.

    Progress counts only once the attempt a cut ended has been followed by a new one: the cut
    attempt may still commit the block it had in hand, and a cut timed on that block would
    land while the worker is reconnecting, on no link at all."""
    run.fault_starts()
    cut_attempt = 0
    for _ in range(FLAPS):
        began = run.wait_for_readback(partial(_attempt_after, cut_attempt), "a new attempt of the readback")
        if began is None:
            break  # the readback ended (or was given up): nothing left to cut
        moved = run.wait_for_readback(partial(_moved_on, began), "the readback to get on")
        if moved is None:
            break
        if moved.attempt == began.attempt:
            run.bench.link.drop()
            cut_attempt = began.attempt
    run.fault_ends()


def _attempt_after(cut_attempt: int, now: ReadbackProgress) -> bool:
    return now.attempt > cut_attempt


def _moved_on(began: ReadbackProgress, now: ReadbackProgress) -> bool:
    """The attempt got a block further (or ended without the cut)."""
    return now.attempt != began.attempt or now.next_device > began.next_device


def board_restart(state: bool) -> Fault:
    def restart(run: Run) -> None:
        """The board's process dies (kill -9) and comes back after the outage, with its state
        file or blank."""
        run.bench.chip.kill()
        run.fault_starts()
        run.sleep_until(run.scale.outage_s)
        run.bench.chip.start(state=state)
        run.fault_ends()

    return restart


def power_cycle(run: Run) -> None:
    """The board loses power for an instant (SIM:POW:CYC): its link drops at once and answers
    again once the board is up."""
    run.bench.link.refuse()
    run.fault_starts()
    run.bench.chip.probe.power_cycle()
    run.bench.link.resume()
    run.fault_ends()


def postgres_restart(run: Run) -> None:
    """The real PostgreSQL server restarts under the running campaign."""
    run.fault_starts()
    restart_postgresql()
    time.sleep(2 * (run.watcher.period_s if run.watcher else 0.0))  # the watcher's look at it
    run.fault_ends(database=True)


def worker_kill(run: Run) -> None:
    """The worker is killed (kill -9) and started again after the outage, as a supervisor would."""
    run.bench.worker.kill()
    run.fault_starts()
    run.check_board_goes_safe()
    run.sleep_until(run.scale.outage_s)
    run.bench.worker.start()
    run.fault_ends()


@dataclass(frozen=True)
class Scenario:
    name: str
    phase: str  # programming | readback: where the fault lands
    fault: Fault
    expected_status: ExperimentStatus = ExperimentStatus.DONE
    chip_state: bool = True  # the chip runs with `--state`
    database: str = "sqlite"  # sqlite | postgres
    interrupts_job: bool = True  # the job under way must have been cut (and resumed)
    recovery_target_s: float | None = None  # issue 9's target, where it sets one


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("link_drop_programming", "programming", link_drop, recovery_target_s=RECOVERY_TARGET_S),
    Scenario("link_drop_readback", "readback", link_drop, recovery_target_s=RECOVERY_TARGET_S),
    Scenario("link_flapping_readback", "readback", link_flapping),
    Scenario("board_restart_with_state", "readback", board_restart(state=True)),
    Scenario("board_restart_without_state", "readback", board_restart(state=False),
             expected_status=ExperimentStatus.BOARD_STATE_LOST, chip_state=False),
    Scenario("board_power_cycle_with_state", "readback", power_cycle),
    Scenario("postgres_restart", "readback", postgres_restart, database="postgres", interrupts_job=False),
    Scenario("worker_kill", "readback", worker_kill),
    Scenario("board_restart_programming", "programming", board_restart(state=True)),
    Scenario("worker_kill_programming", "programming", worker_kill),
)}  # fmt: skip


@dataclass
class ScenarioResult:
    """The figures the benchmark reports, and everything a reader needs when one fails."""

    name: str
    recovered: bool
    recovery_s: float | None  # from the fault's end to the first work committed after it
    lost: int | None  # None: the store could not be audited (see problems)
    duplicated: int | None
    late: int | None
    missed: int | None
    flagged: int | None
    readouts: int | None
    experiment_status: str | None
    status_reason: str | None
    attempts: dict[str, int]
    observed: dict[str, Any]
    problems: list[str]
    evidence: list[str]

    def figures(self) -> dict[str, Any]:
        return asdict(self)


UNAUDITED: dict[str, Any] = dict.fromkeys(
    ("lost", "duplicated", "late", "missed", "flagged", "readouts", "experiment_status", "status_reason")
) | {"attempts": {}}


def run_scenario(scenario: Scenario, lab: Lab, scale: Scale) -> ScenarioResult:
    """Run `scenario` on a new bench of `lab` at `scale`; never raises for the lab's faults."""
    bench = lab.bench(scenario.name, clock=scale.clock, watchdog_s=scale.watchdog_s,
                      state=scenario.chip_state, worker=scale.worker)  # fmt: skip
    run = Run(scenario, lab, bench, scale)
    with bench:
        run.mark("bench up")
        poller: ApiPoller | None = None
        recovery_s: float | None = None
        try:
            run.experiment_id = bench.submit(list(scale.offsets_s))
            poller = ApiPoller(lab, [f"/experiments/{run.experiment_id}", f"/health/stations/{bench.name}"])
            poller.start()
            wait_until(run.in_phase, f"the campaign to reach its {scenario.phase}", STARTUP_S, poll_s=0.005)
            run.mark(scenario.phase)
            run.watcher = WorkWatcher(run.engine, run.experiment_id).start()
            scenario.fault(run)
            _settle(run)
            recovery_s = _recovery_s(run, run.watcher)
            _stop_worker(run)
        except (LabError, DBAPIError) as exc:
            run.problems.append(f"the run could not go on: {exc}")
        finally:
            if run.watcher is not None:
                run.watcher.stop()
            if poller is not None:
                poller.stop()
                outages = run.watcher.outages() if run.watcher is not None else []
                failures = poller.failures_after(run.t_back_s or float("inf"), outages)
                run.observed["api_answers"] = len(poller.answers)
                run.expect(not failures, f"the API failed after the fault ended: {failures[:5]}")
        audit = _audit(run)
    return _result(run, audit, recovery_s)


def _recovery_s(run: Run, watcher: WorkWatcher) -> float | None:
    """Seconds from the fault's end until the campaign committed work again."""
    recovery_s = watcher.moved_after_s(run.t_back_s)
    if recovery_s is None:
        run.problems.append("no work committed after the fault ended")
        return None
    run.mark("moved", run.t_back_s + recovery_s)
    target_s = run.scenario.recovery_target_s
    run.expect(target_s is None or recovery_s <= target_s,
               f"work resumed {recovery_s:.2f} s after the fault ended (target ≤ {target_s} s)")  # fmt: skip
    return recovery_s


def _settle(run: Run) -> None:
    def done() -> bool:
        try:
            return settled(run.engine, run.experiment_id)
        except DBAPIError:
            return False

    try:
        wait_until(done, "the campaign to settle", run.scale.settle_timeout_s, poll_s=0.1)
    except LabError as exc:
        run.problems.append(str(exc))
    run.mark("settled")
    for name, child in (("worker", run.bench.worker), ("API", run.lab.api)):
        run.expect(child is not None and child.alive, f"the {name} process is not running after the fault")


def _stop_worker(run: Run) -> None:
    """SIGTERM, as a supervisor stops it: exit 0 and the board left safe."""
    code = run.bench.worker.stop()
    run.mark("worker stopped")
    run.observed["worker_exit_code"] = code
    run.expect(code == 0, f"the worker ended with {code} on SIGTERM")
    safe = run.bench.chip.probe.is_safe()
    run.observed["safe_after_stop"] = safe
    run.expect(safe, "the board was not in its safe state after the worker stopped")


def _audit(run: Run) -> Audit | None:
    if not run.experiment_id:
        return None
    try:
        probe = run.bench.chip.probe if run.bench.chip.child and run.bench.chip.child.alive else None
        return patiently("auditing", lambda: audit_campaign(run.engine, run.experiment_id, probe))
    except Exception as exc:  # the verdict itself failed: say so, with the reason
        run.problems.append(f"the audit failed: {type(exc).__name__}: {exc}")
        return None


def _result(run: Run, audit: Audit | None, recovery_s: float | None) -> ScenarioResult:
    scenario = run.scenario
    if audit is not None:
        _judge(run, audit)
    recovered = (
        audit is not None and recovery_s is not None and audit.experiment_status == scenario.expected_status
        and not audit.open_jobs and not audit.lost and not audit.duplicated and not audit.disagreeing
    )  # fmt: skip
    evidence = [
        *(f"worker: {line}" for line in run.bench.worker.log_lines(r"WARNING|ERROR|Traceback|Error:")),
        *(f"api: {line}" for line in (run.lab.api.log_lines(r"ERROR|Traceback") if run.lab.api else [])),
    ]
    return ScenarioResult(
        name=scenario.name, recovered=recovered,
        recovery_s=None if recovery_s is None else round(recovery_s, 3),
        **(audit.figures() if audit is not None else UNAUDITED),
        observed={**run.observed, "timeline_s": run.timeline_s}, problems=run.problems, evidence=evidence,
    )  # fmt: skip


def _judge(run: Run, audit: Audit) -> None:
    """The rules of the module docs, and the scenario's own."""
    scenario = run.scenario
    run.expect(audit.experiment_status == scenario.expected_status,
               f"experiment ended {audit.experiment_status!r} ({audit.status_reason}), "
               f"expected {scenario.expected_status.value!r}")  # fmt: skip
    run.expect(not audit.open_jobs, f"jobs still open: {audit.open_jobs}")
    run.expect(not audit.failed_jobs, f"jobs failed, interrupted or cancelled: {audit.failed_jobs}")
    run.expect(not audit.lost, f"readouts lost at offsets {audit.lost}")
    run.expect(not audit.duplicated, f"readouts duplicated at offsets {audit.duplicated}")
    run.expect(audit.programming_runs == 1, f"{audit.programming_runs} programming runs, expected 1")
    run.expect(not audit.disagreeing, f"unflagged readouts disagree with the board: {audit.disagreeing}")
    if scenario.expected_status == ExperimentStatus.DONE:
        run.expect(not audit.flagged, f"readouts flagged in a campaign that kept its state: "
                                      f"{[r.suspect for r in audit.flagged][:2]}")  # fmt: skip
        run.expect(
            audit.direct_read is None, f"the chip now disagrees with the last readout: {audit.direct_read}"
        )
    else:
        # Flagged within one readback: nothing read after the board came back is unflagged.
        unflagged = [r.offset_s for r in audit.readouts if r.suspect is None and _read_after_fault(run, r)]
        run.expect(
            not unflagged, f"readouts read after the board lost its state are not flagged: {unflagged}"
        )
        run.expect(bool(audit.flagged), "no readout flagged after the board lost its state")
    if scenario.interrupts_job:
        label = (
            "program"
            if scenario.phase == "programming"
            else f"readback@{run.scale.offsets_s[READBACK_CUT]:g}s"
        )
        attempts = audit.attempts.get(label, 0)
        run.expect(
            attempts >= 2, f"the fault did not land mid-{scenario.phase}: {label} ran {attempts} time(s)"
        )


def _read_after_fault(run: Run, readout: Any) -> bool:
    """Whether `readout` was stored after the fault ended (its row's wall-clock time)."""
    wall_back_s = time.time() - (time.monotonic() - run.t_back_s)
    read_at = readout.read_at if readout.read_at.tzinfo else readout.read_at.replace(tzinfo=UTC)
    return bool(read_at.timestamp() >= wall_back_s)
