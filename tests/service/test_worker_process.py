"""The worker as an operating-system process: kill -9, restart, graceful stop.

The simulated chip lives in the test process (a real TCP server on a virtual clock), so
it outlives the worker exactly as a lab board outlives a crashed host program.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, func, select, update

from hwctl.cli import main
from hwctl.embedded_chip import EmbeddedChip
from hwctl.mapping import DeviceMap
from hwctl.settings import get_settings
from hwctl.store.engine import make_engine
from hwctl.store.schema import experiments, jobs, mappings, programming_runs, readouts
from hwctl.vocabulary import JobKind
from hwctl.worker import Worker, WorkerOptions
from tests.service.conftest import create_campaign, job_statuses

REPO = Path(__file__).resolve().parents[2]
BLOCK_DEVICES = 5_000  # the digits network's ~38k devices in 8 blocks per readout
POINTS = 10
# The `hwctl` entry point (not `-m hwctl.cli`, which would load the CLI module twice).
HWCTL = "import sys; from hwctl.cli import main; sys.exit(main())"
# A worker process imports torch and programs the network first: generous on a busy machine.
STARTUP_S = 120.0


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def start_worker(database_url: str, station: str) -> subprocess.Popen[bytes]:
    """`hwctl worker` as a child process; its log goes to a file next to the database."""
    env = {**os.environ, "HWCTL_DATABASE_URL": database_url}
    command = [sys.executable, "-c", HWCTL, "worker", "--station", station,
               "--block-devices", str(BLOCK_DEVICES), "--poll-s", "0.1"]  # fmt: skip
    log_path = Path(database_url.removeprefix("sqlite:///")).with_suffix(".worker.log")
    with log_path.open("ab") as log_file:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def restart_in_thread(engine: Engine, station: str) -> Worker:
    """The restart after a kill: the same worker code, in this process to save a torch import."""
    worker = Worker(engine, station, WorkerOptions(poll_s=0.1, read_block_devices=BLOCK_DEVICES))
    worker.start()
    return worker


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def scalar(engine: Engine, query) -> object:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def campaign_idle(engine: Engine) -> bool:
    return scalar(engine, select(func.count()).where(jobs.c.status.in_(("queued", "running")))) == 0


class Gate:
    """Holds the simulated chip inside one command, so a test can act at an exact point.

    Wraps one `SimBoard` method; the first call for which `when(args)` is true blocks
    until `release()`. The server is single-threaded, so the worker waits on the link.
    """

    def __init__(self, chip: EmbeddedChip, method: str, when: Callable[..., bool]) -> None:
        self.reached = threading.Event()
        self._open = threading.Event()
        original = getattr(chip.board, method)

        def gated(*args: object) -> object:
            if not self.reached.is_set() and when(*args):
                self.reached.set()
                self._open.wait(30)
            return original(*args)

        setattr(chip.board, method, gated)

    def release(self) -> None:
        self._open.set()


def readout_block_gate(engine: Engine, chip: EmbeddedChip, block: int, after_readouts: int) -> Gate:
    """Stop at the start of `block` (0-based) of a readout once `after_readouts` are stored."""
    first_address: list[int] = []

    def when(addresses: np.ndarray) -> bool:
        if scalar(engine, select(func.count()).select_from(readouts)) < after_readouts:
            return False
        if not first_address:
            device_map = DeviceMap.from_bytes(scalar(engine, select(mappings.c.device_map)))  # type: ignore[arg-type]
            first_address.append(int(device_map.addresses[block * BLOCK_DEVICES]))
        return bool(addresses.size and addresses[0] == first_address[0])

    return Gate(chip, "read_block", when)


@pytest.mark.slow
def test_kill_9_mid_readout_then_restart_resumes_from_the_last_block_and_loses_nothing(
    sqlite_url: str, engine: Engine, virtual_chip: EmbeddedChip
) -> None:
    campaign = create_campaign(engine, virtual_chip.resource, points=POINTS)
    gate = readout_block_gate(engine, virtual_chip, block=3, after_readouts=3)
    worker = start_worker(sqlite_url, campaign.station)
    try:
        assert gate.reached.wait(STARTUP_S), "the worker never reached block 4 of the fourth readout"
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        worker.kill()
        gate.release()
    running = select(jobs.c.id, jobs.c.checkpoint).where(jobs.c.kind == JobKind.READBACK)
    running = running.where(jobs.c.status == "running")
    with engine.connect() as conn:
        killed_id, checkpoint = conn.execute(running).one()
    assert checkpoint["next_device"] == 3 * BLOCK_DEVICES  # three blocks committed before the kill

    restarted = restart_in_thread(engine, campaign.station)
    try:
        wait_for(lambda: campaign_idle(engine), "the campaign to finish after the restart")
    finally:
        restarted.stop()
    assert restarted.error is None

    assert job_statuses(engine, JobKind.PROGRAM) == ["succeeded"]
    assert job_statuses(engine, JobKind.READBACK) == ["succeeded"] * len(campaign.offsets_s)
    with engine.connect() as conn:
        offsets = conn.execute(select(readouts.c.offset_s).order_by(readouts.c.offset_s)).scalars().all()
        resumed = conn.execute(select(jobs.c.attempts, jobs.c.result).where(jobs.c.id == killed_id)).one()
    assert offsets == campaign.offsets_s  # every point once, none lost, none doubled
    assert resumed.attempts == 2
    assert len(resumed.result["block_starts_s"]) == 8  # earlier blocks kept, not read again
    assert not virtual_chip.board.pulser_enabled


@pytest.mark.slow
def test_kill_9_mid_programming_then_restart_resumes_the_run_and_the_campaign_completes(
    sqlite_url: str, engine: Engine, virtual_chip: EmbeddedChip
) -> None:
    campaign = create_campaign(engine, virtual_chip.resource, points=POINTS)
    pulses = iter(range(1_000_000))
    gate = Gate(virtual_chip, "set_pulse", lambda *_: next(pulses) == 3)  # the 4th SET iteration
    worker = start_worker(sqlite_url, campaign.station)
    try:
        assert gate.reached.wait(STARTUP_S), "programming never reached its fourth iteration"
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        worker.kill()
        gate.release()
    progress = scalar(engine, select(jobs.c.progress).where(jobs.c.id == campaign.program_job_id))
    assert 0.0 < progress < 1.0  # type: ignore[operator]

    restarted = restart_in_thread(engine, campaign.station)
    try:
        wait_for(lambda: campaign_idle(engine), "the campaign to finish after the restart")
    finally:
        restarted.stop()
    assert restarted.error is None

    with engine.connect() as conn:
        program = conn.execute(select(jobs).where(jobs.c.id == campaign.program_job_id)).one()
        runs = conn.execute(select(programming_runs.c.ended_at)).scalars().all()
        offsets = conn.execute(select(readouts.c.offset_s).order_by(readouts.c.offset_s)).scalars().all()
        experiment_status = conn.execute(select(experiments.c.status)).scalar()
    assert (program.status, program.attempts, program.error) == ("succeeded", 2, None)
    assert program.result["resumed"] and program.result["converged_fraction"] > 0.9
    assert len(runs) == 1 and runs[0] is not None  # the one run, resumed, not a second programming
    assert job_statuses(engine, JobKind.READBACK) == ["succeeded"] * len(campaign.offsets_s)
    assert offsets == campaign.offsets_s
    assert experiment_status == "done"
    assert not virtual_chip.board.pulser_enabled


def test_a_programming_interrupted_job_max_attempts_times_fails_with_its_experiment_saying_why(
    engine: Engine, virtual_chip: EmbeddedChip
) -> None:
    campaign = create_campaign(engine, virtual_chip.resource, points=POINTS)
    with engine.begin() as conn:  # as a worker killed during its second run leaves it
        conn.execute(update(jobs).where(jobs.c.id == campaign.program_job_id)
                     .values(status="running", attempts=2, heartbeat_s=0.0))  # fmt: skip

    restarted = Worker(engine, campaign.station, WorkerOptions(poll_s=0.1, job_max_attempts=2))
    restarted.start()
    status = select(experiments.c.status, experiments.c.status_reason)
    try:
        wait_for(lambda: scalar(engine, status) == "failed", "the experiment to fail")
    finally:
        restarted.stop()
    assert restarted.error is None
    with engine.connect() as conn:
        program = conn.execute(select(jobs).where(jobs.c.id == campaign.program_job_id)).one()
        experiment = conn.execute(status).one()
    reason = f"program job {campaign.program_job_id}: worker stopped; gave up after 2 attempts"
    assert (program.status, program.error) == ("failed", reason)
    assert experiment.status_reason == reason
    assert job_statuses(engine, JobKind.READBACK) == []
    assert not virtual_chip.board.pulser_enabled


def test_sigterm_finishes_the_block_leaves_the_board_safe_and_exits_0(
    sqlite_url: str, engine: Engine, virtual_chip: EmbeddedChip
) -> None:
    campaign = create_campaign(engine, virtual_chip.resource, points=POINTS)
    gate = readout_block_gate(engine, virtual_chip, block=3, after_readouts=2)
    worker = start_worker(sqlite_url, campaign.station)
    try:
        assert gate.reached.wait(STARTUP_S), "the worker never reached block 4 of the third readout"
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the signal lands while the block is still being read
        gate.release()
        assert worker.wait(30) == 0
    finally:
        worker.kill()
    assert not virtual_chip.board.pulser_enabled
    with engine.connect() as conn:
        paused = conn.execute(select(jobs.c.status, jobs.c.checkpoint).where(jobs.c.kind == JobKind.READBACK)
                              .where(jobs.c.status.not_in(("queued", "succeeded")))).one()  # fmt: skip
    assert paused.status == "interrupted"  # queued again, and resumed, by the next worker start
    assert paused.checkpoint["next_device"] == 4 * BLOCK_DEVICES  # the block under way was finished
    assert scalar(engine, select(func.count()).select_from(readouts)) == 2


def test_worker_for_an_unknown_station_is_a_clear_error_not_a_traceback(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HWCTL_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    try:
        assert main(["worker", "--station", "nowhere"]) == 2
    finally:
        get_settings.cache_clear()
    assert "no station named 'nowhere'" in capsys.readouterr().err
