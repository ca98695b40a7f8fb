"""A campaign that survives the lab: link drops mid-readback and mid-programming, a board
that comes back blank, a PostgreSQL restart. Real TCP throughout: the worker reaches the
simulated chip through a proxy the test cuts (`tests.faultproxy`)."""

from __future__ import annotations

import glob
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError

from hwctl.embedded_chip import EmbeddedChip, SimChipOptions, start_embedded_chip
from hwctl.jobs import JOBS, readback
from hwctl.jobs.context import JobContext
from hwctl.mapping import DeviceMap
from hwctl.store.engine import make_engine
from hwctl.store.health import station_health
from hwctl.store.schema import experiments, jobs, mappings, programming_runs, readouts, stations
from hwctl.vocabulary import JobKind
from hwctl.worker import Worker, WorkerOptions
from tests.faultproxy import FaultProxy
from tests.service.conftest import SMALL_CHIP, Campaign, create_campaign, job_statuses

BLOCK_DEVICES = 5_000  # the digits network's ~38k devices in 8 blocks per readout
POINTS = 4
FAST = WorkerOptions(
    poll_s=0.05, read_block_devices=BLOCK_DEVICES, link_timeout_s=2.0, reconnect_initial_s=0.05,
    reconnect_max_s=0.4, worker_heartbeat_s=0.2,
)  # fmt: skip


@pytest.fixture
def proxy(virtual_chip: EmbeddedChip) -> Iterator[FaultProxy]:
    port = int(virtual_chip.resource.split("::")[2])
    with FaultProxy(("127.0.0.1", port)) as running:
        yield running


def scalar(engine: Engine, query) -> object:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def stored_readouts(engine: Engine) -> int:
    return int(scalar(engine, select(func.count()).select_from(readouts)))  # type: ignore[arg-type]


def idle(engine: Engine) -> bool:
    return scalar(engine, select(func.count()).where(jobs.c.status.in_(("queued", "running")))) == 0


def run_until(worker: Worker, condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    worker.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert worker.error is None, worker.error
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)
    finally:
        worker.stop()
    assert worker.error is None, worker.error


def cut_when(
    chip: EmbeddedChip, method: str, when: Callable[..., bool], cut: Callable[[], None]
) -> threading.Event:
    """The first board call of `method` for which `when(args)` holds runs `cut()` first
    (while the host waits for that command's reply); returns an event set once it has."""
    done = threading.Event()
    original = getattr(chip.board, method)

    def gated(*args: object) -> object:
        if not done.is_set() and when(*args):
            cut()
            done.set()
        return original(*args)

    setattr(chip.board, method, gated)
    return done


def block_of_readout(engine: Engine, block: int, after_readouts: int) -> Callable[[np.ndarray], bool]:
    """True at the read of `block` (0-based) of a readout once `after_readouts` are stored."""
    first: list[int] = []

    def when(addresses: np.ndarray) -> bool:
        if stored_readouts(engine) < after_readouts:
            return False
        if not first:
            stored = scalar(engine, select(mappings.c.device_map))
            first.append(int(DeviceMap.from_bytes(stored).addresses[block * BLOCK_DEVICES]))  # type: ignore[arg-type]
        return bool(addresses.size == BLOCK_DEVICES and addresses[0] == first[0])

    return when


def assert_every_point_once(engine: Engine, campaign: Campaign) -> None:
    with engine.connect() as conn:
        offsets = conn.execute(select(readouts.c.offset_s).order_by(readouts.c.offset_s)).scalars().all()
    assert offsets == campaign.offsets_s  # none lost, none doubled


def link_row(engine: Engine) -> tuple[str, int]:
    with engine.connect() as conn:
        row = conn.execute(select(stations.c.link_state, stations.c.link_attempts)).one()
    return row.link_state, row.link_attempts


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def test_a_link_cut_mid_readback_resumes_from_the_last_block_once_the_board_answers(
    engine: Engine, virtual_chip: EmbeddedChip, proxy: FaultProxy
) -> None:
    campaign = create_campaign(engine, proxy.resource(), points=POINTS)
    seen_down: list[tuple[str, int]] = []

    def pull_the_cable() -> None:
        proxy.refuse()  # the reply of this block never arrives; re-opening is refused
        threading.Timer(0.5, lambda: (seen_down.append(link_row(engine)), proxy.resume())).start()

    cut = cut_when(
        virtual_chip, "read_block", block_of_readout(engine, block=3, after_readouts=1), pull_the_cable
    )
    worker = Worker(engine, campaign.station, FAST)
    run_until(worker, lambda: cut.is_set() and idle(engine), "the campaign to finish after the cut")

    assert seen_down and seen_down[0][0] == "down" and seen_down[0][1] >= 1
    assert link_row(engine) == ("up", 0)
    assert scalar(engine, select(stations.c.worker_heartbeat_at)) is not None
    assert job_statuses(engine, JobKind.READBACK) == ["succeeded"] * POINTS
    assert_every_point_once(engine, campaign)
    with engine.connect() as conn:
        second = conn.execute(
            select(jobs).where(jobs.c.kind == JobKind.READBACK).order_by(jobs.c.run_at_s).offset(1).limit(1)
        ).one()
    assert second.attempts == 2 and second.error is None  # resumed, and no stale error
    assert len(second.result["block_starts_s"]) == 8  # blocks 1–3 kept, not read again
    assert not virtual_chip.board.pulser_enabled


def test_a_link_cut_mid_programming_resumes_the_run_instead_of_failing_it(
    engine: Engine, virtual_chip: EmbeddedChip, proxy: FaultProxy
) -> None:
    campaign = create_campaign(engine, proxy.resource(), points=POINTS)
    pulses = iter(range(1_000_000))
    cut = cut_when(virtual_chip, "set_pulse", lambda *_: next(pulses) == 2, proxy.drop)  # 3rd SET iteration
    worker = Worker(engine, campaign.station, FAST)
    run_until(worker, lambda: cut.is_set() and idle(engine), "the campaign to finish after the cut")

    with engine.connect() as conn:
        program = conn.execute(select(jobs).where(jobs.c.kind == JobKind.PROGRAM)).one()
        runs = conn.execute(select(func.count()).select_from(programming_runs)).scalar_one()
        status = conn.execute(select(experiments.c.status)).scalar_one()
    assert program.status == "succeeded" and program.attempts == 2 and program.error is None
    assert program.result["resumed"] and program.result["converged_fraction"] >= 0.99
    assert runs == 1  # the same run went on
    assert status == "done"
    assert job_statuses(engine, JobKind.READBACK) == ["succeeded"] * POINTS
    assert_every_point_once(engine, campaign)


def test_a_programming_cut_again_and_again_without_progress_fails_with_its_experiment_saying_why(
    engine: Engine, virtual_chip: EmbeddedChip, proxy: FaultProxy
) -> None:
    campaign = create_campaign(engine, proxy.resource(), points=POINTS)
    original = virtual_chip.board.set_pulse

    def cut_every_time(*args: object) -> object:  # no SET pulse ever answers
        proxy.drop()
        return original(*args)

    virtual_chip.board.set_pulse = cut_every_time  # type: ignore[method-assign]
    worker = Worker(engine, campaign.station, replace(FAST, job_max_attempts=2))
    failed = select(func.count()).where(experiments.c.status == "failed")
    run_until(worker, lambda: scalar(engine, failed) == 1, "the experiment to fail")

    with engine.connect() as conn:
        program = conn.execute(select(jobs).where(jobs.c.kind == JobKind.PROGRAM)).one()
        reason = conn.execute(select(experiments.c.status_reason)).scalar_one()
    # The first run stored the run (progress); the next two got no further.
    assert (program.status, program.attempts) == ("failed", 3)
    assert program.error.startswith(f"program job {program.id}: link lost during attempt 3: ")
    assert program.error.endswith("; gave up after 3 attempts, the last 2 without progress")
    assert reason == program.error
    assert job_statuses(engine, JobKind.READBACK) == []


def test_a_board_back_blank_flags_the_experiment_and_every_later_readout(
    engine: Engine, virtual_chip: EmbeddedChip, proxy: FaultProxy
) -> None:
    campaign = create_campaign(engine, proxy.resource(), points=POINTS)

    def power_cycle() -> None:  # no state file: every device at 0 µS, the clock back at 0
        virtual_chip.board.power_cycle()
        proxy.drop()

    cut = cut_when(
        virtual_chip, "read_block", block_of_readout(engine, block=0, after_readouts=1), power_cycle
    )
    worker = Worker(engine, campaign.station, FAST)
    run_until(worker, lambda: cut.is_set() and idle(engine), "the campaign to end after the power cycle")

    with engine.connect() as conn:
        experiment = conn.execute(select(experiments.c.status, experiments.c.status_reason)).one()
        flags = conn.execute(select(readouts.c.suspect).order_by(readouts.c.offset_s)).scalars().all()
    assert experiment.status == "board_state_lost"  # never "done" with blank data
    assert (
        "went backwards" in experiment.status_reason
        and "outside the drift/noise band" in experiment.status_reason
    )
    assert flags[0] is None  # read before the power cycle
    assert len(flags) == POINTS and all(flag == experiment.status_reason for flag in flags[1:])


PAUSE_RATE = 100.0  # board s per wall s: an outage of ~2 wall s outlasts a 60-s readback window


@pytest.fixture
def accelerated_chip() -> Iterator[EmbeddedChip]:
    chip = start_embedded_chip(SimChipOptions(rate=PAUSE_RATE, geometry=SMALL_CHIP, seed=5))
    yield chip
    chip.stop()


def test_a_link_down_past_the_limit_pauses_the_queue_misses_late_readbacks_with_the_reason_and_resumes(
    engine: Engine, accelerated_chip: EmbeddedChip
) -> None:
    proxy = FaultProxy(("127.0.0.1", int(accelerated_chip.resource.split("::")[2]))).start()
    offsets_s = [25.0, 300.0, 700.0]  # windows: 60, 150 and 350 board s
    campaign = create_campaign(engine, proxy.resource(), clock_kind="accelerated", offsets_s=offsets_s)
    seen: list[tuple[str, list[str]]] = []

    def look_then_reconnect() -> None:
        with engine.connect() as conn:
            [health] = station_health(conn, worker_stale_after_s=60.0)
        seen.append((link_row(engine)[0], list(health.problems)))
        proxy.resume()

    def pull_the_cable() -> None:  # at the second readout, for 2 s of wall time: 200 board s
        proxy.refuse()
        threading.Timer(2.0, look_then_reconnect).start()

    options = replace(FAST, link_timeout_s=0.5, link_pause_after_s=0.3)
    cut = cut_when(
        accelerated_chip, "read_block", block_of_readout(engine, 0, after_readouts=1), pull_the_cable
    )
    try:
        worker = Worker(engine, campaign.station, options)
        run_until(worker, lambda: cut.is_set() and idle(engine), "the campaign to end after the outage")
    finally:
        proxy.close()

    [(state_while_down, problems)] = seen
    assert state_while_down == "paused"
    assert len(problems) == 1 and "link is down since" in problems[0] and "queue is paused" in problems[0]
    assert link_row(engine) == ("up", 0)  # resumed by itself
    with engine.connect() as conn:
        rows = conn.execute(select(jobs.c.status, jobs.c.error).where(jobs.c.kind == JobKind.READBACK)
                            .order_by(jobs.c.run_at_s)).all()  # fmt: skip
    assert [r.status for r in rows] == ["succeeded", "missed", "succeeded"]
    assert "not started within its window: link down since 20" in rows[1].error
    assert stored_readouts(engine) == 2


def test_a_stop_while_the_link_hangs_ends_the_worker_within_2_s(
    engine: Engine, virtual_chip: EmbeddedChip, proxy: FaultProxy
) -> None:
    campaign = create_campaign(engine, proxy.resource(), points=POINTS)
    cut = cut_when(
        virtual_chip, "read_block", block_of_readout(engine, block=3, after_readouts=1), proxy.blackhole
    )
    patient = WorkerOptions(
        poll_s=0.05, read_block_devices=BLOCK_DEVICES, link_timeout_s=30.0, stop_grace_s=1.0
    )
    worker = Worker(engine, campaign.station, patient)
    worker.start()
    assert cut.wait(60), "the worker never reached block 4 of the second readout"
    time.sleep(0.2)  # the worker now waits for a reply that will never come

    asked_s = time.monotonic()
    worker.stop_event.set()  # what SIGTERM does
    worker.stop(timeout_s=10.0)
    assert time.monotonic() - asked_s < 2.0
    assert worker.error is None
    with engine.connect() as conn:
        paused = conn.execute(
            select(jobs.c.status, jobs.c.checkpoint).where(jobs.c.status == "interrupted")
        ).one()
    assert paused.checkpoint["next_device"] == 3 * BLOCK_DEVICES  # resumes from the last committed block


def test_a_database_error_inside_a_job_puts_it_back_at_its_checkpoint_instead_of_failing_it(
    engine: Engine, virtual_chip: EmbeddedChip, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign = create_campaign(engine, virtual_chip.resource, points=2)
    outages: list[int] = []

    def read_after_one_outage(ctx: JobContext, payload: readback.ReadbackPayload) -> None:
        if not outages:  # a statement of the handler's own meets a dropped connection
            outages.append(ctx.job_id)
            raise OperationalError("SELECT 1", {}, ConnectionError("server closed the connection"))
        readback.JOB.handle(ctx, payload)

    monkeypatch.setitem(JOBS, JobKind.READBACK, replace(readback.JOB, handle=read_after_one_outage))
    run_until(Worker(engine, campaign.station, FAST), lambda: bool(outages) and idle(engine), "the campaign")

    with engine.connect() as conn:
        first = conn.execute(select(jobs).where(jobs.c.id == outages[0])).one()
    assert (first.status, first.attempts, first.error) == ("succeeded", 2, None)
    assert job_statuses(engine, JobKind.READBACK) == ["succeeded"] * 2
    assert_every_point_once(engine, campaign)


POSTGRES_CLUSTERS = glob.glob("/etc/postgresql/*")


def restart_postgresql() -> None:
    version = os.path.basename(POSTGRES_CLUSTERS[0])
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


@pytest.mark.skipif(not POSTGRES_CLUSTERS, reason="no local PostgreSQL cluster to restart")
def test_a_postgresql_restart_mid_campaign_loses_and_doubles_nothing(
    postgres_url: str, virtual_chip: EmbeddedChip, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(postgres_url, pool_pre_ping=True)
    campaign = create_campaign(engine, virtual_chip.resource, points=POINTS)
    restart = threading.Thread(target=restart_postgresql)  # while the worker reads on
    cut = cut_when(
        virtual_chip, "read_block", block_of_readout(engine, block=2, after_readouts=1), restart.start
    )

    def finished() -> bool:
        try:
            return cut.is_set() and not restart.is_alive() and idle(engine)
        except Exception:  # the test's own look while the server restarts
            return False

    run_until(Worker(engine, campaign.station, FAST), finished, "the campaign to finish after the restart")

    assert any("database unavailable" in r.getMessage() for r in caplog.records)  # it did ride one out
    assert job_statuses(engine, JobKind.READBACK) == ["succeeded"] * POINTS
    assert_every_point_once(engine, campaign)
    assert scalar(engine, select(experiments.c.status)) == "done"
    engine.dispose()
