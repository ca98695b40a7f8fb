"""The program job: map the network onto the chip, program-and-verify it, store the run
and queue its readbacks.

The run's per-device outcome and the campaign's readback jobs are stored in one
transaction, so a crash can never leave a programmed chip without its schedule.
"""

from __future__ import annotations

from sqlalchemy import Connection

from hwctl import queue
from hwctl.experiment_spec import ExperimentSpec
from hwctl.jobs import analyze, readback
from hwctl.jobs.context import PRIORITY_READBACK, JobContext, JobPayload, JobType
from hwctl.mapping import map_network
from hwctl.nn.conductance import export_layers
from hwctl.program_verify import ProgramSettings, program_and_verify
from hwctl.schedule import readout_window_s
from hwctl.store import readouts as store_readouts
from hwctl.store.campaign import load_spec, move_experiment
from hwctl.store.networks import load_network
from hwctl.store.records import add_mapping
from hwctl.vocabulary import ExperimentStatus, JobKind, JobLane


class ProgramPayload(JobPayload):
    """Program the experiment's network as its spec says."""


def program_settings(spec: ExperimentSpec) -> ProgramSettings:
    """The loop's knobs the spec sets; the others keep the loop's defaults."""
    return ProgramSettings(**spec.program.model_dump(exclude_none=True))


def handle(ctx: JobContext, payload: ProgramPayload) -> None:
    """A programming that fails leaves its experiment `failed` (the chip state is unknown;
    an operator decides), so the station is free for the next experiment."""
    try:
        _program(ctx, payload.experiment_id)
    except Exception:
        with ctx.writing() as conn:
            move_experiment(conn, payload.experiment_id, ExperimentStatus.FAILED)
        raise


def _program(ctx: JobContext, experiment_id: int) -> None:
    station = ctx.chip_station
    with ctx.writing() as conn:
        spec = load_spec(conn, experiment_id)
        model = load_network(conn, spec.network_id).build()
        device_map = map_network(export_layers(model), station.chip.geometry(), spec.g_max_us)
        mapping_id = add_mapping(
            conn, network_id=spec.network_id, station_id=ctx.station_id, device_map=device_map.to_bytes(),
            n_devices=device_map.n_devices, utilisation=device_map.utilisation.fraction_of_chip,
            experiment_id=experiment_id,
        )  # fmt: skip
        run_id = store_readouts.start_programming_run(
            conn, mapping_id, spec.program.model_dump(), experiment_id=experiment_id
        )
        move_experiment(conn, experiment_id, ExperimentStatus.PROGRAMMING)
    n = device_map.n_devices

    def progress(iteration: int, remaining: int, converged: int) -> None:
        ctx.safe_point(converged / n, f"iteration {iteration}: {converged}/{n} devices converged")

    result = program_and_verify(
        station.chip, device_map.addresses, device_map.target_g_us, program_settings(spec), progress
    )
    end_s = float(result.programmed_s.max()) if n else station.clock_now_s()
    with ctx.writing() as conn:
        store_readouts.finish_programming_run(conn, run_id, result)
        reading = move_experiment(conn, experiment_id, ExperimentStatus.READING)
        if reading:  # else cancelled while programming: the run is kept, no readbacks follow
            schedule_readbacks(conn, ctx, spec, experiment_id, run_id, end_s)
    # Completed after the commit: `complete` is a write of its own, and SQLite has one writer.
    ctx.complete({
        "run_id": run_id, "mapping_id": mapping_id, "n_devices": n, "programmed_end_s": end_s,
        "converged_fraction": result.converged_fraction_nonzero, "iterations_mean": result.iterations_mean,
        "cancelled": not reading,
    })  # fmt: skip


def schedule_readbacks(
    conn: Connection, ctx: JobContext, spec: ExperimentSpec, experiment_id: int, run_id: int, end_s: float
) -> None:
    """Queue the readbacks at their offsets after `end_s` (in bounded batches), and the
    drift fit after them."""
    readbacks = []
    for offset_s in spec.schedule.offsets_s:
        scheduled_s = end_s + offset_s
        point = readback.ReadbackPayload(
            experiment_id=experiment_id, run_id=run_id, offset_s=offset_s, scheduled_s=scheduled_s
        )
        readbacks.append(readback.JOB.new_job(
            ctx.station_id, point, run_at_s=scheduled_s, window_s=readout_window_s(offset_s),
            key=f"readback:{run_id}:{offset_s}", priority=PRIORITY_READBACK, run_id=run_id,
            scheduled_s=scheduled_s,
        ))  # fmt: skip
    queue.enqueue_many_in(conn, readbacks)
    # The drift fit waits until the last readback is done or past its window; the
    # last readback to finish brings it forward (see readback._finish).
    last_s = spec.schedule.offsets_s[-1]
    fit = analyze.JOB.new_job(
        ctx.station_id, analyze.AnalyzePayload(experiment_id=experiment_id, run_id=run_id),
        run_at_s=end_s + last_s + readout_window_s(last_s), key=analyze.key(run_id),
    )  # fmt: skip
    queue.enqueue_in(conn, **fit)


JOB = JobType(JobKind.PROGRAM, JobLane.CHIP, ProgramPayload, handle)
