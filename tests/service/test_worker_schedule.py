"""The worker and the schedule: late readbacks run at once, missed ones are marked, cancel."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sqlalchemy import Engine, func, select, update

from hwctl import queue
from hwctl.embedded_chip import EmbeddedChip
from hwctl.experiment_spec import MappingSpec
from hwctl.mapping import DeviceMap, map_network
from hwctl.nn.conductance import export_layers
from hwctl.nn.models import build_model
from hwctl.schedule import readout_window_s
from hwctl.store.engine import make_engine
from hwctl.store.schema import (
    device_fits,
    evaluations,
    experiments,
    jobs,
    mappings,
    programming_runs,
    readouts,
)
from hwctl.vocabulary import JobKind
from hwctl.worker import Worker, WorkerOptions
from tests.service.conftest import SMALL_CHIP, create_campaign, job_statuses


def run_while(worker: Worker, engine: Engine, busy: str, timeout_s: float = 60.0) -> None:
    """Run the worker thread until no job of status `busy` (or running) is left."""
    worker.start()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            assert worker.error is None, worker.error
            with engine.connect() as conn:
                left = conn.execute(select(jobs.c.id).where(jobs.c.status.in_((busy, "running")))).first()
            if left is None:
                return
            time.sleep(0.02)
        raise AssertionError(f"jobs still {busy} after {timeout_s} s")
    finally:
        worker.stop()


@pytest.fixture
def engine(sqlite_url: str) -> Engine:
    return make_engine(sqlite_url)


def program_then_stop(engine: Engine, chip: EmbeddedChip, station: str, after_readouts: int = 0) -> float:
    """Run the worker until programming and `after_readouts` readouts are done and it would
    wait for the next readback.

    The board is taken away at that moment (its clock is not advanced); returns the
    programming end time in board seconds.
    """
    worker = Worker(engine, station)
    advance = chip.board.clock.advance

    def advance_or_stop(seconds: float) -> None:
        with engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(readouts)).scalar_one()
        if stored >= after_readouts:
            worker.stop_event.set()
        else:
            advance(seconds)

    chip.board.clock.advance = advance_or_stop  # type: ignore[method-assign]
    try:
        worker.start()
        worker.stop_event.wait(60)
        worker.stop()
    finally:
        chip.board.clock.advance = advance  # type: ignore[method-assign]
    assert worker.error is None and job_statuses(engine, JobKind.PROGRAM) == ["succeeded"]
    return program_end_s(engine)


def program_end_s(engine: Engine) -> float:
    """Board time at which programming ended (the campaign's time origin)."""
    with engine.connect() as conn:
        result = conn.execute(select(jobs.c.result).where(jobs.c.kind == JobKind.PROGRAM)).scalar_one()
    return float(result["programmed_end_s"])


def test_after_downtime_late_readbacks_run_at_once_and_those_past_their_window_are_missed(
    engine: Engine, virtual_chip: EmbeddedChip
) -> None:
    campaign = create_campaign(engine, virtual_chip.resource, points=12)
    end_s = program_then_stop(engine, virtual_chip, campaign.station)
    outage_s = 1_300.0  # past the 484 s point and its window, inside the 1015 s one
    virtual_chip.board.clock.advance(end_s + outage_s - virtual_chip.board.clock.now_s())

    run_while(Worker(engine, campaign.station), engine, "queued")

    with engine.connect() as conn:
        readbacks = select(jobs.c.status, jobs.c.payload).where(jobs.c.kind == JobKind.READBACK)
        rows = conn.execute(readbacks).all()
        read = {r.offset_s: r for r in conn.execute(select(readouts))}
    late = [o for o in campaign.offsets_s if o <= outage_s < o + readout_window_s(o)]
    missed = [o for o in campaign.offsets_s if o + readout_window_s(o) < outage_s]
    assert late and missed
    for row in rows:
        assert row.status == ("missed" if row.payload["offset_s"] in missed else "succeeded")
    for offset_s in late:  # read at once on restart, the actual (late) time recorded
        lateness_s = read[offset_s].board_time_s - read[offset_s].scheduled_s
        assert lateness_s == pytest.approx(outage_s - offset_s, abs=5.0)
    assert sorted(read) == [o for o in campaign.offsets_s if o not in missed]
    engine.dispose()


def test_cancelling_a_running_programming_stops_it_at_the_next_iteration_without_readbacks(
    engine: Engine, virtual_chip: EmbeddedChip
) -> None:
    campaign = create_campaign(engine, virtual_chip.resource)
    original = virtual_chip.board.set_pulse
    calls = []

    def set_pulse_then_cancel(*args: object) -> None:
        calls.append(1)
        if len(calls) == 2:  # the second SET of programming: ask for a cancel
            assert queue.cancel(engine, campaign.program_job_id) == "running"
        original(*args)  # type: ignore[arg-type]

    virtual_chip.board.set_pulse = set_pulse_then_cancel  # type: ignore[method-assign]
    run_while(Worker(engine, campaign.station), engine, "queued")

    assert job_statuses(engine, JobKind.PROGRAM) == ["cancelled"]
    assert len(calls) == 2  # stopped at the heartbeat right after that iteration
    assert job_statuses(engine, JobKind.READBACK) == []
    with engine.connect() as conn:
        assert conn.execute(select(programming_runs.c.ended_at)).scalar_one() is None
    assert not virtual_chip.board.pulser_enabled
    engine.dispose()


def test_a_cancelled_readback_is_skipped_and_the_rest_of_the_campaign_completes(
    engine: Engine, virtual_chip: EmbeddedChip
) -> None:
    campaign = create_campaign(engine, virtual_chip.resource, points=5)
    program_then_stop(engine, virtual_chip, campaign.station)
    with engine.connect() as conn:
        third = conn.execute(
            select(jobs.c.id).where(jobs.c.kind == JobKind.READBACK)
            .order_by(jobs.c.run_at_s).offset(2).limit(1)
        ).scalar_one()
    assert queue.cancel(engine, third) == "cancelled"

    run_while(Worker(engine, campaign.station), engine, "queued")

    expected = ["succeeded", "succeeded", "cancelled", "succeeded", "succeeded"]
    assert job_statuses(engine, JobKind.READBACK) == expected
    with engine.connect() as conn:
        offsets = conn.execute(select(readouts.c.offset_s).order_by(readouts.c.offset_s)).scalars().all()
    assert offsets == [o for i, o in enumerate(campaign.offsets_s) if i != 2]
    engine.dispose()


def test_a_later_readback_due_between_blocks_goes_first_and_the_earlier_one_resumes_after_it(
    engine: Engine, virtual_chip: EmbeddedChip
) -> None:
    block = 5_000
    campaign = create_campaign(engine, virtual_chip.resource, points=8)
    original = virtual_chip.board.read_block
    jumped: list[float] = []

    def read_block(addresses: np.ndarray) -> np.ndarray:
        """While the fourth readout reads its third block, the fifth point falls due."""
        with engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(readouts)).scalar_one()
            device_map = conn.execute(select(mappings.c.device_map)).scalar()
        if not jumped and stored == 3 and device_map is not None:
            third_block = DeviceMap.from_bytes(device_map).addresses[2 * block]
            if addresses.size and addresses[0] == third_block:
                end_s = program_end_s(engine)
                jumped.append(end_s + campaign.offsets_s[4] + 1.0)
                virtual_chip.board.clock.advance(jumped[0] - virtual_chip.board.clock.now_s())
        return original(addresses)

    virtual_chip.board.read_block = read_block  # type: ignore[method-assign]
    run_while(Worker(engine, campaign.station, WorkerOptions(read_block_devices=block)), engine, "queued")

    assert jumped, "the fourth readout never reached its third block"
    assert job_statuses(engine, JobKind.READBACK) == ["succeeded"] * 8
    with engine.connect() as conn:
        rows = conn.execute(select(jobs).where(jobs.c.kind == JobKind.READBACK)).all()
        overtaken = next(r for r in rows if r.payload["offset_s"] == campaign.offsets_s[3])
        read = {r.offset_s: r.board_time_s for r in conn.execute(select(readouts))}
    fifth = next(r for r in rows if r.payload["offset_s"] == campaign.offsets_s[4])
    assert fifth.attempts == 1  # never handed the chip back to the one it overtook
    fifth_read_s = read[campaign.offsets_s[4]]
    assert fifth_read_s == pytest.approx(jumped[0], abs=1.0)  # on time, not behind the fourth
    blocks_s = overtaken.result["block_starts_s"]
    assert overtaken.attempts == 2
    assert blocks_s[2] < fifth_read_s <= blocks_s[3]  # blocks 1–3 before it, the rest after


def test_when_the_last_readbacks_are_missed_the_drift_fit_still_runs_and_the_experiment_names_them(
    engine: Engine, virtual_chip: EmbeddedChip
) -> None:
    campaign = create_campaign(engine, virtual_chip.resource, points=6)
    end_s = program_then_stop(engine, virtual_chip, campaign.station, after_readouts=3)
    virtual_chip.board.clock.advance(end_s + 3 * 86_400.0 - virtual_chip.board.clock.now_s())  # outage

    run_while(Worker(engine, campaign.station), engine, "queued")

    assert job_statuses(engine, JobKind.READBACK) == ["succeeded"] * 3 + ["missed"] * 3
    assert job_statuses(engine, JobKind.ANALYZE) == ["succeeded"]
    with engine.connect() as conn:
        fit = conn.execute(select(device_fits.c.summary)).scalar_one()
    assert fit["n_readouts"] == 3
    with engine.connect() as conn:
        status, reason = conn.execute(
            select(experiments.c.status, experiments.c.status_reason)
            .where(experiments.c.id == campaign.experiment_id)
        ).one()  # fmt: skip
    assert status == "done"  # done, but not as if complete: the holes are named
    assert reason.startswith("3 of 6 scheduled readbacks missed: ")
    assert all(f"{offset_s:g} s (" in reason for offset_s in campaign.offsets_s[3:])
    engine.dispose()


def experiment_status(engine: Engine, experiment_id: int) -> str:
    with engine.connect() as conn:
        status = conn.execute(select(experiments.c.status).where(experiments.c.id == experiment_id))
        return str(status.scalar_one())


def test_a_programming_that_fails_leaves_its_experiment_failed_and_the_station_free(
    engine: Engine, virtual_chip: EmbeddedChip
) -> None:
    campaign = create_campaign(engine, virtual_chip.resource)
    virtual_chip.board.set_amplitude_limit_ua(100.0)  # below what program-and-verify needs
    run_while(Worker(engine, campaign.station), engine, "queued")

    assert job_statuses(engine, JobKind.PROGRAM) == ["failed"]
    assert experiment_status(engine, campaign.experiment_id) == "failed"
    assert job_statuses(engine, JobKind.READBACK) == []
    engine.dispose()


def test_an_experiment_cancelled_while_programming_stays_cancelled_without_readbacks(
    engine: Engine, virtual_chip: EmbeddedChip
) -> None:
    campaign = create_campaign(engine, virtual_chip.resource)
    original = virtual_chip.board.set_pulse

    def set_pulse_while_the_user_cancels(*args: object) -> None:
        with engine.begin() as conn:  # what POST /experiments/{id}/cancel writes
            conn.execute(update(experiments).where(experiments.c.id == campaign.experiment_id)
                         .values(status="cancelled"))  # fmt: skip
        original(*args)  # type: ignore[arg-type]

    virtual_chip.board.set_pulse = set_pulse_while_the_user_cancels  # type: ignore[method-assign]
    run_while(Worker(engine, campaign.station), engine, "queued")

    assert experiment_status(engine, campaign.experiment_id) == "cancelled"
    assert job_statuses(engine, JobKind.PROGRAM) == ["succeeded"]  # the run is stored, nothing follows
    assert job_statuses(engine, JobKind.READBACK) == []
    engine.dispose()


def test_layers_kept_digital_stay_off_the_chip_and_the_campaign_reads_the_rest(
    engine: Engine, virtual_chip: EmbeddedChip
) -> None:
    campaign = create_campaign(
        engine, virtual_chip.resource, points=3, evaluate=True,
        mapping=MappingSpec(digital_layers="first_and_last"),
    )  # fmt: skip
    run_while(Worker(engine, campaign.station), engine, "queued", timeout_s=120.0)

    assert experiment_status(engine, campaign.experiment_id) == "done"
    with engine.connect() as conn:
        device_map = DeviceMap.from_bytes(conn.execute(select(mappings.c.device_map)).scalar_one())
        sizes = conn.execute(select(readouts.c.g_len)).scalars().all()
        accuracies = conn.execute(select(evaluations.c.accuracy)).scalars().all()
    everything = map_network(export_layers(build_model("digits-resnet")), SMALL_CHIP)
    assert device_map.digital_layers == ("conv1", "linear")
    assert [layer.name for layer in device_map.layers] == [
        layer.name for layer in everything.layers if layer.name not in ("conv1", "linear")
    ]
    assert sizes == [device_map.n_devices] * 3 and device_map.n_devices < everything.n_devices
    assert len(accuracies) == 3 * 3 and all(0.0 <= a <= 100.0 for a in accuracies)  # readout x method, %
    engine.dispose()
