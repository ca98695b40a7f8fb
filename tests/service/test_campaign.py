"""A whole 24 h campaign on the simulated chip over TCP, in virtual station time."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sqlalchemy import select

from hwctl.embedded_chip import EmbeddedChip
from hwctl.store.engine import make_engine
from hwctl.store.readouts import load_programming_result, load_readout, run_readouts
from hwctl.store.schema import device_fits, evaluations, experiments, jobs, programming_runs
from hwctl.store.vectors import decode_row
from hwctl.vocabulary import JobKind
from hwctl.worker import Worker, WorkerOptions
from tests.service.conftest import create_campaign, job_statuses


def run_until_idle(worker: Worker, engine, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Run the worker in a thread until no job is queued or running."""
    worker.start()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            assert worker.error is None, worker.error
            with engine.connect() as conn:
                open_jobs = conn.execute(
                    select(jobs.c.id).where(jobs.c.status.in_(("queued", "running")))
                ).all()
            if not open_jobs:
                return
            time.sleep(0.05)
        raise AssertionError("campaign did not finish in time")
    finally:
        worker.stop()


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_24h_campaign_stores_every_readout_with_its_times(
    database: str, request: pytest.FixtureRequest, virtual_chip: EmbeddedChip
) -> None:
    url = request.getfixturevalue(f"{database}_url")
    engine = make_engine(url)
    campaign = create_campaign(engine, virtual_chip.resource)
    started = time.monotonic()
    run_until_idle(Worker(engine, campaign.station, WorkerOptions(read_block_devices=20_000)), engine)
    elapsed_s = time.monotonic() - started

    assert elapsed_s < 60
    assert job_statuses(engine, JobKind.PROGRAM) == ["succeeded"]
    assert job_statuses(engine, JobKind.READBACK) == ["succeeded"] * len(campaign.offsets_s)
    with engine.connect() as conn:
        run_id = conn.execute(select(programming_runs.c.id)).scalar_one()
        programmed = load_programming_result(conn, run_id)
        end_s = float(programmed.programmed_s.max())
        listed = run_readouts(conn, run_id)
        assert [offset for _, offset in listed] == campaign.offsets_s
        for readout_id, offset_s in listed:
            readout = load_readout(conn, readout_id)
            assert readout.g_us.shape == programmed.g_final_us.shape
            assert readout.scheduled_s == pytest.approx(end_s + offset_s)
            assert readout.board_time_s >= readout.scheduled_s
            assert readout.board_time_s - readout.scheduled_s < 1.0  # virtual clock: on time
    assert not virtual_chip.board.pulser_enabled
    engine.dispose()


def test_each_readout_is_evaluated_per_method_and_drift_is_fitted_after_the_last(
    sqlite_url: str, virtual_chip: EmbeddedChip
) -> None:
    engine = make_engine(sqlite_url)
    campaign = create_campaign(engine, virtual_chip.resource, points=4, evaluate=True)
    run_until_idle(Worker(engine, campaign.station), engine)

    assert job_statuses(engine, JobKind.EVALUATE) == ["succeeded"] * 4
    assert job_statuses(engine, JobKind.ANALYZE) == ["succeeded"]
    with engine.connect() as conn:
        rows = conn.execute(select(evaluations)).all()
        fit = conn.execute(select(device_fits)).one()
        n_devices = conn.execute(select(programming_runs.c.g_final_len)).scalar_one()
        status = conn.execute(select(experiments.c.status)).scalar_one()
    assert sorted(r.method for r in rows) == sorted(["none", "gdc", "adabs"] * 4)
    assert all(0.0 <= r.accuracy <= 100.0 and r.n_images == 100 for r in rows)
    nu = decode_row(fit, "nu", what="fit")
    assert nu.shape == (n_devices,)
    assert 0.02 < float(np.nanmedian(nu)) < 0.1  # the simulated chip's drift exponents
    assert fit.summary["n_readouts"] == 4
    assert status == "done"
    engine.dispose()
