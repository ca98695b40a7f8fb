"""A job's row may change under the worker (a user's cancel between two looks): the
worker keeps the row's state and goes on, it never stops on the refused transition."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import Engine, update

from hwctl.embedded_chip import EmbeddedChip
from hwctl.jobs import JOBS, evaluate
from hwctl.jobs.context import JobContext
from hwctl.store.engine import make_engine
from hwctl.store.schema import jobs
from hwctl.vocabulary import JobKind, JobStatus
from hwctl.worker import Worker, WorkerOptions
from tests.service.conftest import create_campaign, job_statuses
from tests.service.test_worker_lanes import idle, wait_until

OFFSETS_S = [25.0, 60.0, 120.0]


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def test_a_job_cancelled_under_a_failing_handler_leaves_the_worker_running(
    engine: Engine, virtual_chip: EmbeddedChip, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign = create_campaign(engine, virtual_chip.resource, evaluate=True, offsets_s=OFFSETS_S)

    def cancelled_then_failing(ctx: JobContext, payload: evaluate.EvaluatePayload) -> None:
        with engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == ctx.job_id).values(status=JobStatus.CANCELLED))
        raise RuntimeError("the handler fails after its job was cancelled")

    monkeypatch.setitem(JOBS, JobKind.EVALUATE, replace(evaluate.JOB, handle=cancelled_then_failing))
    worker = Worker(engine, campaign.station, WorkerOptions(poll_s=0.1))
    worker.start()
    try:
        wait_until(worker, lambda: idle(engine), "the campaign to finish")
    finally:
        worker.stop()
    assert worker.error is None
    assert job_statuses(engine, JobKind.EVALUATE) == ["cancelled"] * len(OFFSETS_S)
    assert job_statuses(engine, JobKind.READBACK) == ["succeeded"] * len(OFFSETS_S)
    assert job_statuses(engine, JobKind.ANALYZE) == ["succeeded"]
