"""The compute lane: evaluation and analysis run beside the chip, never in front of it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from hwctl.embedded_chip import EmbeddedChip, SimChipOptions, start_embedded_chip
from hwctl.jobs import JOBS, evaluate
from hwctl.jobs.context import JobContext
from hwctl.store.engine import make_engine
from hwctl.store.readouts import device_read_times_s
from hwctl.store.schema import jobs, readouts
from hwctl.vocabulary import JobKind
from hwctl.worker import Worker, WorkerOptions
from tests.service.conftest import SMALL_CHIP, create_campaign, job_statuses

RATE = 10.0  # board s per wall s: the early readbacks fall due 1.3–3.1 wall s apart
OFFSETS_S = [25.0, 38.0, 59.0, 90.0]  # the start of the paper's schedule, as a real station runs it
# How late a readback may start after its chip lane is free — its due time or the end of the
# readback before it, whichever is later (board s; 1.5 wall s): scheduling jitter on a busy
# machine, far below the wait behind an evaluation (the rest of the campaign, here).
MAX_LATE_S = 15.0
BLOCK_DEVICES = 5_000


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def accelerated_chip() -> Iterator[EmbeddedChip]:
    chip = start_embedded_chip(SimChipOptions(rate=RATE, geometry=SMALL_CHIP, seed=5))
    yield chip
    chip.stop()


def stored_readouts(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(readouts)).scalar_one())


def wait_until(worker: Worker, done: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.error is None, worker.error
        if done():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def idle(engine: Engine) -> bool:
    busy = select(jobs.c.id).where(jobs.c.status.in_(("queued", "running")))
    with engine.connect() as conn:
        return conn.execute(busy).first() is None


def test_a_slow_evaluation_does_not_delay_the_readbacks_that_fall_due_while_it_runs(
    engine: Engine, accelerated_chip: EmbeddedChip, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign = create_campaign(
        engine, accelerated_chip.resource, clock_kind="accelerated", evaluate=True, offsets_s=OFFSETS_S
    )
    overlapped: list[bool] = []

    def slow_evaluate(ctx: JobContext, payload: evaluate.EvaluatePayload) -> None:
        """The first evaluation runs until every readback of the campaign is stored."""
        assert ctx.station is None  # the compute lane never holds the chip
        if not overlapped:
            deadline = time.monotonic() + 60.0
            while stored_readouts(engine) < len(OFFSETS_S) and time.monotonic() < deadline:
                time.sleep(0.02)
            overlapped.append(stored_readouts(engine) == len(OFFSETS_S))
        evaluate.handle(ctx, payload)

    monkeypatch.setitem(JOBS, JobKind.EVALUATE, replace(evaluate.JOB, handle=slow_evaluate))
    worker = Worker(engine, campaign.station, WorkerOptions(poll_s=0.1, read_block_devices=BLOCK_DEVICES))
    worker.start()
    try:
        wait_until(worker, lambda: idle(engine), "the campaign to finish")
    finally:
        worker.stop()
    assert worker.error is None

    assert overlapped == [True]  # the later readbacks all fell due while the first evaluation ran
    assert job_statuses(engine, JobKind.READBACK) == ["succeeded"] * len(OFFSETS_S)
    assert job_statuses(engine, JobKind.EVALUATE) == ["succeeded"] * len(OFFSETS_S)
    assert job_statuses(engine, JobKind.ANALYZE) == ["succeeded"]
    with engine.connect() as conn:
        rows = conn.execute(select(readouts).order_by(readouts.c.offset_s)).all()
        readbacks_finished_s = (
            conn.execute(
                select(jobs.c.finished_s).where(jobs.c.kind == JobKind.READBACK).order_by(jobs.c.scheduled_s)
            )
            .scalars()
            .all()
        )
        lane_free_s = [rows[0].scheduled_s] + [
            max(r.scheduled_s, before_s) for r, before_s in zip(rows[1:], readbacks_finished_s, strict=False)
        ]
        late_s = [r.board_time_s - free_s for r, free_s in zip(rows, lane_free_s, strict=True)]
        assert max(late_s) <= MAX_LATE_S, (late_s, [r.board_time_s for r in rows], readbacks_finished_s)
        # Each block's start is recorded, and is the read time of the devices in it.
        for row in rows:
            firsts, starts_s = zip(*row.block_starts, strict=True)
            assert list(firsts) == list(range(0, row.g_len, BLOCK_DEVICES))
            assert starts_s[0] == row.board_time_s and list(starts_s) == sorted(starts_s)
            assert starts_s[-1] > starts_s[0]  # the accelerated clock moved while reading
            read_s = device_read_times_s(conn, row.id)
            assert read_s.size == row.g_len
            assert np.array_equal(np.unique(read_s), np.unique(starts_s))
            assert read_s[BLOCK_DEVICES] == starts_s[1]


def test_stopping_the_worker_pauses_a_running_evaluation_and_the_next_start_completes_it(
    engine: Engine, accelerated_chip: EmbeddedChip, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign = create_campaign(
        engine, accelerated_chip.resource, clock_kind="accelerated", evaluate=True, offsets_s=OFFSETS_S[:1]
    )
    started = threading.Event()

    def evaluation_until_stopped(ctx: JobContext, payload: evaluate.EvaluatePayload) -> None:
        started.set()
        while True:  # a long evaluation: its safe points see the stop request
            ctx.safe_point(0.0, "evaluating")
            time.sleep(0.02)

    monkeypatch.setitem(JOBS, JobKind.EVALUATE, replace(evaluate.JOB, handle=evaluation_until_stopped))
    worker = Worker(engine, campaign.station, WorkerOptions(poll_s=0.1))
    worker.start()
    assert started.wait(60), "the evaluation never started"
    worker.stop()
    assert worker.error is None and not worker._thread.is_alive()  # type: ignore[union-attr]
    assert job_statuses(engine, JobKind.EVALUATE) == ["interrupted"]
    assert not accelerated_chip.board.pulser_enabled

    monkeypatch.setitem(JOBS, JobKind.EVALUATE, evaluate.JOB)
    restarted = Worker(engine, campaign.station, WorkerOptions(poll_s=0.1))
    restarted.start()
    try:
        wait_until(
            restarted, lambda: job_statuses(engine, JobKind.EVALUATE) == ["succeeded"], "the evaluation"
        )
    finally:
        restarted.stop()
    assert restarted.error is None
