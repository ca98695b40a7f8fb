"""The station worker's job handlers: program a network, read it back, evaluate, analyze.

A campaign is one programming run followed by readbacks at log-spaced offsets after it
(station clock). Programming stores its per-device outcome and, in the same
transaction, the campaign's readback jobs, so a crash can never leave a programmed
chip without its schedule. A readback reads the mapped devices in blocks and commits
a checkpoint after each, so a restart resumes from the last committed block and a
cancel or shutdown waits for at most one block. Programming and readbacks run in the
station's chip lane; evaluation and drift analysis in its compute lane, without the chip.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine, select, update

from hwctl import queue
from hwctl.analysis.drift import fit_drift
from hwctl.analysis.statistics import chip_statistics
from hwctl.experiment_spec import JOB_ANALYZE, JOB_EVALUATE, JOB_PROGRAM, JOB_READBACK, ExperimentSpec
from hwctl.mapping import DeviceMap, map_network
from hwctl.nn.conductance import export_layers
from hwctl.nn.data import load_dataset
from hwctl.nn.evaluation import ReadoutEvaluator, calibration_set
from hwctl.nn.models import Checkpoint, load_checkpoint
from hwctl.program_verify import DeviceStatus, ProgramSettings, program_and_verify
from hwctl.schedule import readout_window_s
from hwctl.station import Station
from hwctl.store import readouts as store_readouts
from hwctl.store.engine import SQLITE_BEGIN_OPTION
from hwctl.store.fits import save_device_fit
from hwctl.store.readouts import device_read_times_s
from hwctl.store.records import add_evaluation, add_mapping
from hwctl.store.schema import (
    EXPERIMENT_ACTIVE_STATUSES,
    evaluations,
    experiments,
    mappings,
    networks,
    programming_runs,
    readouts,
)
from hwctl.store.schema import jobs as jobs_table

# Devices per readback block: ~1 MB of float32 per round trip and per checkpoint.
READ_BLOCK_DEVICES = 262_144
# Readbacks outrank evaluation and analysis: a due read must never wait behind them.
PRIORITY_READBACK = 10
PRIORITY_FOLLOW_UP = 0
# A drift line per device needs three points to have a residual.
MIN_READOUTS_TO_FIT = 3
# Only programming and readbacks need the instrument.
LANES = {
    JOB_PROGRAM: queue.LANE_CHIP,
    JOB_READBACK: queue.LANE_CHIP,
    JOB_EVALUATE: queue.LANE_COMPUTE,
    JOB_ANALYZE: queue.LANE_COMPUTE,
}


class JobCancelled(Exception):
    """The job's cancel flag was seen at a safe point; nothing after it was done."""


class JobPaused(Exception):
    """The worker is shutting down; the job's last checkpoint is committed, resume later."""


class JobOvertaken(Exception):
    """A later readback fell due while this one was between blocks: let it go first."""


class CampaignError(RuntimeError):
    """The stored campaign is inconsistent (missing mapping, run not finished...)."""


Heartbeat = Callable[[float, str, dict[str, Any] | None], bool]
Complete = Callable[[dict[str, Any]], None]


@dataclass
class JobContext:
    """What a handler may use: the database, the station and its own job's bookkeeping.

    `heartbeat(progress, message, checkpoint)` commits progress (and a checkpoint) and
    returns False when the job's cancel flag is set; `complete(result)` marks the job
    succeeded once the handler's final transaction has committed (handlers check what is
    already stored, so a crash between the two never stores anything twice);
    `stopping()` is the worker's shutdown request; `overtaken()` says a later readback
    of the station is due now. `station` is None in the compute lane.
    """

    engine: Engine
    station: Station | None
    station_id: int
    job_id: int
    kind: str
    payload: dict[str, Any]
    checkpoint: dict[str, Any] | None
    heartbeat: Heartbeat
    complete: Complete
    stopping: Callable[[], bool]
    overtaken: Callable[[], bool]
    cache: dict[Any, Any] = field(default_factory=dict)
    read_block_devices: int = READ_BLOCK_DEVICES

    @property
    def chip_station(self) -> Station:
        """The station with its chip: only chip-lane jobs have it."""
        if self.station is None:
            raise CampaignError(f"{self.kind} job {self.job_id} needs the chip but runs in the compute lane")
        return self.station

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A write transaction that takes SQLite's write lock up front: with the other lane
        writing too, it then waits its turn instead of failing on a stale read snapshot."""
        immediate = {SQLITE_BEGIN_OPTION: "IMMEDIATE"}
        with self.engine.connect().execution_options(**immediate) as conn, conn.begin():
            yield conn

    def safe_point(self, progress: float, message: str, checkpoint: dict[str, Any] | None = None) -> None:
        """Commit progress; raise if the job was cancelled or the worker is stopping."""
        if not self.heartbeat(progress, message, checkpoint):
            raise JobCancelled(f"job {self.job_id} cancelled at {message}")
        if self.stopping():
            raise JobPaused(f"job {self.job_id} paused at {message}")


# -- loading what a campaign is made of ---------------------------------------------------
def load_spec(conn: Connection, experiment_id: int) -> ExperimentSpec:
    row = conn.execute(select(experiments.c.settings).where(experiments.c.id == experiment_id)).one_or_none()
    if row is None:
        raise CampaignError(f"experiment {experiment_id} does not exist")
    return ExperimentSpec.model_validate(row.settings)


def load_network(conn: Connection, network_id: int) -> Checkpoint:
    """The network's checkpoint from its stored bytes or its path."""
    row = conn.execute(select(networks).where(networks.c.id == network_id)).one_or_none()
    if row is None:
        raise CampaignError(f"network {network_id} does not exist")
    source = row.checkpoint if row.checkpoint is not None else row.checkpoint_path
    return load_checkpoint(source, row.architecture)


def run_device_map(ctx: JobContext, conn: Connection, run_id: int) -> DeviceMap:
    """The device map a programming run was written with, decoded once per worker."""
    key = ("device_map", run_id)
    if key not in ctx.cache:
        stored = conn.execute(
            select(mappings.c.device_map)
            .join(programming_runs, programming_runs.c.mapping_id == mappings.c.id)
            .where(programming_runs.c.id == run_id)
        ).scalar()
        if stored is None:
            raise CampaignError(f"programming run {run_id} has no mapping")
        ctx.cache[key] = DeviceMap.from_bytes(stored)
    device_map: DeviceMap = ctx.cache[key]
    return device_map


def _program_settings(spec: ExperimentSpec) -> ProgramSettings:
    chosen = spec.program.model_dump(exclude={"seed"}, exclude_none=True)
    return ProgramSettings(**chosen)


def _enqueue(
    conn: Connection,
    ctx: JobContext,
    kind: str,
    payload: dict[str, Any],
    *,
    run_at_s: float,
    key: str,
    window_s: float | None = None,
    priority: int = PRIORITY_FOLLOW_UP,
) -> None:
    conn.execute(
        jobs_table.insert().values(
            kind=kind, lane=LANES[kind], station_id=ctx.station_id, payload=payload, status="queued",
            experiment_id=payload.get("experiment_id"), run_at_s=run_at_s, window_s=window_s,
            priority=priority, idempotency_key=key,
        )
    )  # fmt: skip


def _set_experiment_status(conn: Connection, experiment_id: int, status: str) -> bool:
    """Move an active experiment on; one already cancelled, failed or done stays as it is
    (a job finishing after the user's cancel must not bring it back). True if it moved."""
    moved = conn.execute(
        update(experiments)
        .where(experiments.c.id == experiment_id, experiments.c.status.in_(EXPERIMENT_ACTIVE_STATUSES))
        .values(status=status)
    )
    return moved.rowcount > 0


# -- program ------------------------------------------------------------------------------
def handle_program(ctx: JobContext) -> None:
    """Map the network, program-and-verify it, store the run and schedule its readbacks.

    A programming that fails leaves its experiment `failed` (the chip state is unknown;
    an operator decides), so the station is free for the next experiment."""
    experiment_id = int(ctx.payload["experiment_id"])
    try:
        _program(ctx, experiment_id)
    except Exception:
        with ctx.writing() as conn:
            _set_experiment_status(conn, experiment_id, "failed")
        raise


def _program(ctx: JobContext, experiment_id: int) -> None:
    with ctx.writing() as conn:
        spec = load_spec(conn, experiment_id)
        model = load_network(conn, spec.network_id).build()
        device_map = map_network(export_layers(model), ctx.chip_station.chip.geometry(), spec.g_max_us)
        mapping_id = add_mapping(
            conn, network_id=spec.network_id, station_id=ctx.station_id, device_map=device_map.to_bytes(),
            n_devices=device_map.n_devices, utilisation=device_map.utilisation.fraction_of_chip,
            experiment_id=experiment_id,
        )  # fmt: skip
        settings = _program_settings(spec)
        run_id = store_readouts.start_programming_run(
            conn, mapping_id, spec.program.model_dump(), experiment_id=experiment_id
        )
        _set_experiment_status(conn, experiment_id, "programming")
    n = device_map.n_devices

    def progress(iteration: int, remaining: int, converged: int) -> None:
        ctx.safe_point(converged / n, f"iteration {iteration}: {converged}/{n} devices converged")

    result = program_and_verify(
        ctx.chip_station.chip, device_map.addresses, device_map.target_g_us, settings, progress
    )
    end_s = float(result.t_programmed_s.max()) if n else ctx.chip_station.clock_now_s()
    with ctx.writing() as conn:
        store_readouts.finish_programming_run(
            conn, run_id,
            store_readouts.ProgrammingResult(
                result.final_g_us, result.iterations.astype(np.int32), result.status, result.t_programmed_s
            ),
        )  # fmt: skip
        reading = _set_experiment_status(conn, experiment_id, "reading")
        if reading:  # else cancelled while programming: the run is kept, no readbacks follow
            _schedule_readbacks(conn, ctx, spec, experiment_id, run_id, end_s)
    # Completed after the commit: `complete` is a write of its own, and SQLite has one writer.
    ctx.complete({
        "run_id": run_id, "mapping_id": mapping_id, "n_devices": n, "programmed_end_s": end_s,
        "converged_fraction": result.converged_fraction_nonzero, "iterations_mean": result.iterations_mean,
        "cancelled": not reading,
    })  # fmt: skip


def _schedule_readbacks(
    conn: Connection, ctx: JobContext, spec: ExperimentSpec, experiment_id: int, run_id: int, end_s: float
) -> None:
    """Queue the readbacks at their offsets after `end_s`, and the drift fit after them."""
    for offset_s in spec.schedule.offsets_s:
        payload = {"experiment_id": experiment_id, "run_id": run_id, "offset_s": offset_s,
                   "scheduled_s": end_s + offset_s}  # fmt: skip
        _enqueue(
            conn, ctx, JOB_READBACK, payload, run_at_s=end_s + offset_s,
            window_s=readout_window_s(offset_s), key=f"readback:{run_id}:{offset_s}",
            priority=PRIORITY_READBACK,
        )  # fmt: skip
    # The drift fit waits until the last readback is done or past its window; the
    # last readback to finish pulls it forward (see _finish_readback).
    last_s = spec.schedule.offsets_s[-1]
    _enqueue(conn, ctx, JOB_ANALYZE, {"experiment_id": experiment_id, "run_id": run_id},
             run_at_s=end_s + last_s + readout_window_s(last_s), key=_analyze_key(run_id))  # fmt: skip


# -- readback -----------------------------------------------------------------------------
@dataclass
class PartialReadout:
    """The blocks of one readback read so far; round-trips through the job's checkpoint."""

    g_us: npt.NDArray[np.float32]
    next_device: int = 0
    block_first_devices: list[int] = field(default_factory=list)
    block_starts_s: list[float] = field(default_factory=list)
    temperature_c: float | None = None

    def to_checkpoint(self) -> dict[str, Any]:
        done = self.g_us[: self.next_device]
        return {
            "next_device": self.next_device,
            "g_us_b64": base64.b64encode(done.astype("<f4").tobytes()).decode(),
            "block_first_devices": self.block_first_devices,
            "block_starts_s": self.block_starts_s,
            "temperature_c": self.temperature_c,
        }

    def block_starts(self) -> list[list[float]]:
        """[[first device, board s], …]: the readout row's record of when each block was read."""
        return [
            [first, t_s] for first, t_s in zip(self.block_first_devices, self.block_starts_s, strict=True)
        ]

    @classmethod
    def from_checkpoint(cls, n_devices: int, checkpoint: dict[str, Any] | None) -> PartialReadout:
        partial = cls(np.zeros(n_devices, np.float32))
        if checkpoint:
            done = np.frombuffer(base64.b64decode(checkpoint["g_us_b64"]), "<f4")
            partial.next_device = int(checkpoint["next_device"])
            if done.size != partial.next_device or done.size > n_devices:
                raise CampaignError(f"readback checkpoint holds {done.size} values for {partial.next_device}")
            partial.g_us[: done.size] = done
            partial.block_first_devices = [int(d) for d in checkpoint["block_first_devices"]]
            partial.block_starts_s = [float(t) for t in checkpoint["block_starts_s"]]
            partial.temperature_c = checkpoint.get("temperature_c")
        return partial


def handle_readback(ctx: JobContext) -> None:
    """Read every mapped device of the run in blocks; store one readout row at the end."""
    run_id, offset_s = int(ctx.payload["run_id"]), float(ctx.payload["offset_s"])
    with ctx.engine.connect() as conn:
        stored = conn.execute(
            select(readouts.c.id).where(readouts.c.run_id == run_id, readouts.c.offset_s == offset_s)
        ).scalar()
        device_map = run_device_map(ctx, conn, run_id)
    if stored is not None:  # stored before a crash, job not yet marked done
        ctx.complete({"readout_id": int(stored)})
        return
    addresses = device_map.addresses
    n = addresses.size
    partial = PartialReadout.from_checkpoint(n, ctx.checkpoint)
    station = ctx.chip_station
    if partial.temperature_c is None:
        partial.temperature_c = station.temperature_c()
    while partial.next_device < n:
        start, stop = partial.next_device, min(partial.next_device + ctx.read_block_devices, n)
        partial.block_first_devices.append(start)
        partial.block_starts_s.append(station.clock_now_s())
        partial.g_us[start:stop] = station.chip.read_block(addresses[start:stop])
        partial.next_device = stop
        if stop < n:
            ctx.safe_point(stop / n, f"read {stop}/{n} devices", partial.to_checkpoint())
            if ctx.overtaken():  # the later point is read on time; this one resumes after it
                raise JobOvertaken(f"job {ctx.job_id} yields after {stop}/{n} devices")
    _finish_readback(ctx, run_id, offset_s, partial)


def _finish_readback(ctx: JobContext, run_id: int, offset_s: float, partial: PartialReadout) -> None:
    experiment_id = int(ctx.payload["experiment_id"])
    scheduled_s = float(ctx.payload["scheduled_s"])
    with ctx.writing() as conn:
        spec = load_spec(conn, experiment_id)
        readout_id = store_readouts.add_readout(
            conn, run_id, offset_s=offset_s, scheduled_s=scheduled_s, board_time_s=partial.block_starts_s[0],
            g_us=partial.g_us, temperature_c=partial.temperature_c,
        )  # fmt: skip
        blocks = (
            update(readouts).where(readouts.c.id == readout_id).values(block_starts=partial.block_starts())
        )
        conn.execute(blocks)
        now_s = partial.block_starts_s[-1]
        if spec.evaluation.enabled:
            _enqueue(conn, ctx, JOB_EVALUATE, {"experiment_id": experiment_id, "run_id": run_id,
                     "readout_id": readout_id}, run_at_s=now_s, key=f"evaluate:{readout_id}")  # fmt: skip
        if not _readbacks_pending(conn, ctx, run_id):
            analyze = update(jobs_table).where(
                jobs_table.c.idempotency_key == _analyze_key(run_id), jobs_table.c.status == "queued"
            )
            conn.execute(analyze.values(run_at_s=now_s))
    ctx.complete({
        "readout_id": readout_id, "late_s": partial.block_starts_s[0] - scheduled_s,
        "block_starts_s": partial.block_starts_s, "n_devices": int(partial.g_us.size),
    })  # fmt: skip


def _analyze_key(run_id: int) -> str:
    return f"analyze:{run_id}"


def _readbacks_pending(conn: Connection, ctx: JobContext, run_id: int) -> bool:
    """Whether another readback of this run is still queued or running (not this one)."""
    rows = conn.execute(
        select(jobs_table.c.payload).where(
            jobs_table.c.station_id == ctx.station_id, jobs_table.c.kind == JOB_READBACK,
            jobs_table.c.status.in_(("queued", "running")), jobs_table.c.id != ctx.job_id,
        )
    )  # fmt: skip
    return any(int(r.payload.get("run_id", -1)) == run_id for r in rows)


# -- evaluate and analyze -------------------------------------------------------------------
def _evaluator(ctx: JobContext, conn: Connection, spec: ExperimentSpec, run_id: int) -> ReadoutEvaluator:
    """One evaluator per run and worker: the model, its device map and the AdaBS images."""
    key = ("evaluator", run_id)
    if key not in ctx.cache:
        device_map = run_device_map(ctx, conn, run_id)
        calibration = None
        if "adabs" in spec.evaluation.methods:
            train = load_dataset(spec.evaluation.dataset, "train")
            n = spec.evaluation.calibration_images
            calibration = train.subset(n) if n else calibration_set(train, spec.evaluation.dataset)
        ctx.cache[key] = ReadoutEvaluator(load_network(conn, spec.network_id), device_map, calibration)
    evaluator: ReadoutEvaluator = ctx.cache[key]
    return evaluator


def handle_evaluate(ctx: JobContext) -> None:
    """Accuracy of the network as read back, once per compensation method of the spec."""
    experiment_id, run_id = int(ctx.payload["experiment_id"]), int(ctx.payload["run_id"])
    readout_id = int(ctx.payload["readout_id"])
    with ctx.engine.connect() as conn:
        spec = load_spec(conn, experiment_id)
        done = set(
            conn.execute(select(evaluations.c.method).where(evaluations.c.readout_id == readout_id)).scalars()
        )
        evaluator = _evaluator(ctx, conn, spec, run_id)
        g_t_us = store_readouts.load_readout(conn, readout_id).g_us
        first_id = store_readouts.run_readouts(conn, run_id)[0][0]
        g_t0_us = g_t_us if first_id == readout_id else store_readouts.load_readout(conn, first_id).g_us
    data = load_dataset(spec.evaluation.dataset, "test").subset(spec.evaluation.n_images)
    accuracy: dict[str, float] = {}
    for index, method in enumerate(m for m in spec.evaluation.methods if m not in done):
        ctx.safe_point(index / len(spec.evaluation.methods), f"evaluating with {method}")
        result = evaluator.evaluate(data, g_t_us, method, g_t0_us)
        with ctx.writing() as conn:
            add_evaluation(
                conn, readout_id, method=method, accuracy=result.accuracy, n_images=result.n_images,
                ci=(result.ci95_low, result.ci95_high),
                settings={"dataset": spec.evaluation.dataset, "t0_readout_id": first_id},
            )  # fmt: skip
        accuracy[method] = result.accuracy
    ctx.complete({"readout_id": readout_id, "accuracy": accuracy})


def handle_analyze(ctx: JobContext) -> None:
    """Per-device drift fits and chip statistics from every readout of the run."""
    run_id = int(ctx.payload["run_id"])
    with ctx.engine.connect() as conn:
        programmed = store_readouts.load_programming_result(conn, run_id)
        device_map = run_device_map(ctx, conn, run_id)
        stored = [
            store_readouts.load_readout(conn, rid) for rid, _ in store_readouts.run_readouts(conn, run_id)
        ]
        read_times_s = [device_read_times_s(conn, r.id) for r in stored]
    if len(stored) < MIN_READOUTS_TO_FIT:
        with ctx.writing() as conn:
            _set_experiment_status(conn, int(ctx.payload["experiment_id"]), "done")
        ctx.complete({"n_readouts": len(stored), "skipped": f"fewer than {MIN_READOUTS_TO_FIT} readouts"})
        return
    g_us = np.stack([r.g_us for r in stored])
    t_s = np.stack([read_s - programmed.programmed_s for read_s in read_times_s]).astype(np.float32)
    fit = fit_drift(g_us, t_s, min_points=MIN_READOUTS_TO_FIT)
    converged = programmed.status == DeviceStatus.CONVERGED
    stats = chip_statistics(fit, device_map.target_g_us, t_s, converged=converged)
    with ctx.writing() as conn:
        fit_id = save_device_fit(
            conn, run_id, fit, statistics=stats.to_dict(), extra_summary={"n_readouts": len(stored)}
        )
        _set_experiment_status(conn, int(ctx.payload["experiment_id"]), "done")
    ctx.complete({"device_fit_id": fit_id, "n_readouts": len(stored), "n_fitted": int(fit.ok.sum())})


HANDLERS: dict[str, Callable[[JobContext], None]] = {
    JOB_PROGRAM: handle_program,
    JOB_READBACK: handle_readback,
    JOB_EVALUATE: handle_evaluate,
    JOB_ANALYZE: handle_analyze,
}
