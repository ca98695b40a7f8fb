"""The program job: map the network onto the chip, program-and-verify it, store the run
and queue its readbacks.

The run's per-device outcome and the campaign's readback jobs are stored in one
transaction, so a crash can never leave a programmed chip without its schedule. The
job's checkpoint names its run: a programming interrupted by the link or a worker crash
(or resumed by an operator) re-reads every device and goes on with those not yet
within tolerance (`program_verify.ResumePoint`) instead of starting again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sqlalchemy import Connection

from drivers.base import Geometry
from hwctl import queue
from hwctl.analog_layers import AnalogLayers
from hwctl.experiment_spec import ExperimentSpec
from hwctl.heap import release_freed_heap
from hwctl.jobs import analyze, readback
from hwctl.jobs.context import (
    LINK_FAILURES,
    PRIORITY_READBACK,
    JobCancelled,
    JobContext,
    JobPaused,
    JobPayload,
    JobType,
)
from hwctl.mapping import DeviceMap, map_network
from hwctl.nn.conductance import export_layers
from hwctl.nn.network_spec import network_spec
from hwctl.program_verify import ProgrammingResult, ProgramSettings, ResumePoint, program_and_verify
from hwctl.schedule import readout_window_s
from hwctl.store import readouts as store_readouts
from hwctl.store.campaign import experiment_state, fail_experiment, load_spec, move_experiment
from hwctl.store.networks import load_network
from hwctl.store.records import add_mapping
from hwctl.vocabulary import ExperimentStatus, JobKind, JobLane

# A programming stopped by these is not failed: it resumes.
_RESUMES: tuple[type[Exception], ...] = (JobPaused, *LINK_FAILURES)


class ProgramPayload(JobPayload):
    """Program the experiment's network as its spec says."""


@dataclass(frozen=True)
class _Run:
    """The stored programming run this job writes: its spec and rows (its device map is held
    apart, and let go once programmed)."""

    spec: ExperimentSpec
    mapping_id: int
    run_id: int

    def checkpoint(self) -> dict[str, Any]:
        return {"mapping_id": self.mapping_id, "run_id": self.run_id}


def program_settings(spec: ExperimentSpec) -> ProgramSettings:
    """The loop's knobs the spec sets; the others keep the loop's defaults."""
    return ProgramSettings(**spec.program.model_dump(exclude_none=True))


def handle(ctx: JobContext, payload: ProgramPayload) -> None:
    """A programming that fails leaves its experiment `failed` with the reason (the chip
    state is unknown; an operator decides), so the station is free for the next one. One
    stopped by the worker or the link is not failed: it resumes."""
    try:
        _program(ctx, payload.experiment_id)
        release_freed_heap()  # the run's arrays are gone: the next job starts from a trimmed heap
    except _RESUMES:
        raise
    except JobCancelled:
        ctx.write(
            "ending the experiment",
            lambda conn: fail_experiment(conn, payload.experiment_id, "programming cancelled"),
        )
        raise
    except Exception as exc:
        reason = f"programming failed: {type(exc).__name__}: {exc}"
        ctx.write("failing the experiment", lambda conn: fail_experiment(conn, payload.experiment_id, reason))
        raise


def _start_run(
    conn: Connection, ctx: JobContext, experiment_id: int, geometry: Geometry, now_s: float
) -> tuple[_Run, DeviceMap]:
    """Map the network and store the run, with the job's checkpoint naming it in the same
    transaction: a crash before the first pulse never leaves a run the job would not resume."""
    spec = load_spec(conn, experiment_id)
    checkpoint = load_network(conn, spec.network_id)
    model = checkpoint.build()
    digital = AnalogLayers.of(network_spec(checkpoint)).kept_digital(spec.mapping)
    device_map = map_network(export_layers(model), geometry, spec.g_max_us, digital_layers=digital)
    mapping_id = add_mapping(
        conn, network_id=spec.network_id, station_id=ctx.station_id, device_map=device_map.to_bytes(),
        n_devices=device_map.n_devices, utilisation=device_map.utilisation.fraction_of_chip,
        experiment_id=experiment_id,
    )  # fmt: skip
    run_id = store_readouts.start_programming_run(
        conn, mapping_id, spec.program.model_dump(), experiment_id=experiment_id
    )
    move_experiment(conn, experiment_id, ExperimentStatus.PROGRAMMING)
    run = _Run(spec, mapping_id, run_id)
    queue.heartbeat_in(conn, ctx.job_id, now_s, checkpoint=run.checkpoint())
    return run, device_map


def _stored_run(conn: Connection, experiment_id: int, checkpoint: dict[str, Any]) -> tuple[_Run, DeviceMap]:
    run_id = int(checkpoint["run_id"])
    device_map = store_readouts.load_run_device_map(conn, run_id)
    return _Run(load_spec(conn, experiment_id), int(checkpoint["mapping_id"]), run_id), device_map


def _program(ctx: JobContext, experiment_id: int) -> None:
    station = ctx.chip_station
    checkpoint = ctx.checkpoint or {}
    resume = None
    if "run_id" in checkpoint and ctx.read(
        "looking at the run", lambda conn: store_readouts.run_finished(conn, int(checkpoint["run_id"]))
    ):
        _complete_stored(ctx, experiment_id, checkpoint)
        return
    if "run_id" in checkpoint:
        run, device_map = ctx.read(
            "loading the run", lambda conn: _stored_run(conn, experiment_id, checkpoint)
        )
        # Every device read now; those within tolerance were last pulsed before this read.
        read_s, g_now_us = station.read_block(device_map.addresses)
        resume = ResumePoint(g_now_us, read_s)
        del g_now_us  # held by `resume` alone, let go after programming
    else:
        geometry, now_s = station.chip.geometry(), station.clock_now_s()
        run, device_map = ctx.write(
            "starting the run", lambda conn: _start_run(conn, ctx, experiment_id, geometry, now_s)
        )
    n = device_map.n_devices
    ctx.safe_point(0.0, "resuming programming" if resume else "programming", run.checkpoint())

    def progress(iteration: int, remaining: int, converged: int) -> None:
        ctx.safe_point(converged / n, f"iteration {iteration}: {converged}/{n} devices converged")

    programmed = program_and_verify(
        station.chip, device_map.addresses, device_map.target_g_us, program_settings(run.spec), progress,
        resume,
    )  # fmt: skip
    outcome = {"converged_fraction": programmed.converged_fraction_nonzero,
               "iterations_mean": programmed.iterations_mean, "resumed": resume is not None}  # fmt: skip
    # Storing the run copies its four outcome vectors (three times over, in the driver): let
    # go of the map and the re-read conductances first, and of the loop's freed blocks.
    result = _outcome_vectors(programmed)
    del programmed, device_map, resume
    release_freed_heap()
    end_s = float(result.programmed_s.max()) if n else station.clock_now_s()
    reading = ctx.write("storing the run", lambda conn: _finish(conn, ctx, experiment_id, run, result, end_s))
    # Completed after the commit: `complete` is a write of its own, and SQLite has one writer.
    ctx.complete({
        "run_id": run.run_id, "mapping_id": run.mapping_id, "n_devices": n, "programmed_end_s": end_s,
        **outcome, "cancelled": not reading,
    })  # fmt: skip


def _complete_stored(ctx: JobContext, experiment_id: int, checkpoint: dict[str, Any]) -> None:
    """The run was stored (and its readbacks queued) by an attempt that died before the
    job's own completion: complete without a read or a pulse. Resuming would re-pulse the
    devices drifted out of tolerance since, under readbacks that count from the stored
    programming times."""
    status = ctx.read("looking at the experiment", lambda conn: experiment_state(conn, experiment_id).status)
    ctx.complete({"run_id": int(checkpoint["run_id"]), "mapping_id": int(checkpoint["mapping_id"]),
                  "resumed": True, "already_stored": True,
                  "cancelled": status == ExperimentStatus.CANCELLED})  # fmt: skip


def _outcome_vectors(result: ProgrammingResult) -> ProgrammingResult:
    """`result` as the store keeps it: the four outcome vectors, the addresses and targets
    (the mapping's, stored with it) as zero-stride stand-ins of the same length, so the map
    (8 bytes a device) need not be held while the run is stored."""
    n = result.n_devices
    return replace(
        result,
        addresses=np.broadcast_to(np.uint32(0), (n,)),
        target_g_us=np.broadcast_to(np.float32(0.0), (n,)),
    )


def _finish(
    conn: Connection, ctx: JobContext, experiment_id: int, run: _Run, result: ProgrammingResult, end_s: float
) -> bool:
    """Store the outcome and queue the readbacks; False if the experiment was cancelled
    meanwhile (the run is kept, no readbacks follow)."""
    if store_readouts.run_finished(conn, run.run_id):  # stored by a commit whose answer was lost
        return experiment_state(conn, experiment_id).status == ExperimentStatus.READING
    store_readouts.finish_programming_run(conn, run.run_id, result)
    reading = move_experiment(conn, experiment_id, ExperimentStatus.READING)
    if reading:
        schedule_readbacks(conn, ctx, run.spec, experiment_id, run.run_id, end_s)
    return reading


def schedule_readbacks(
    conn: Connection, ctx: JobContext, spec: ExperimentSpec, experiment_id: int, run_id: int, end_s: float
) -> None:
    """Queue the readbacks at their offsets after `end_s` (in bounded batches), each
    offset's read draws in order, and the drift fit after them."""
    readbacks = []
    for offset_s in spec.schedule.offsets_s:
        scheduled_s = end_s + offset_s
        for draw in range(spec.schedule.reads_per_point):
            point = readback.ReadbackPayload(
                experiment_id=experiment_id, run_id=run_id, offset_s=offset_s, scheduled_s=scheduled_s,
                draw=draw,
            )  # fmt: skip
            readbacks.append(readback.JOB.new_job(
                ctx.station_id, point, run_at_s=scheduled_s, window_s=readout_window_s(offset_s),
                key=readback.key(run_id, offset_s, draw), priority=PRIORITY_READBACK, run_id=run_id,
                scheduled_s=scheduled_s,
            ))  # fmt: skip
    queue.enqueue_many_in(conn, readbacks)
    # The drift fit waits until the last readback is done or past its window; the
    # last readback to finish brings it forward (see readback._store).
    last_s = spec.schedule.offsets_s[-1]
    fit = analyze.JOB.new_job(
        ctx.station_id, analyze.AnalyzePayload(experiment_id=experiment_id, run_id=run_id),
        run_at_s=end_s + last_s + readout_window_s(last_s), key=analyze.key(run_id),
    )  # fmt: skip
    queue.enqueue_in(conn, **fit)


JOB = JobType(JobKind.PROGRAM, JobLane.CHIP, ProgramPayload, handle, fails_experiment=True)
