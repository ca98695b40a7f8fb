"""The inference job: a data set through the network as the chip holds it, at a stored
readout (compute lane) or now (chip lane: a fresh read, stored as a readout like any other).

A fresh read goes block by block like a readback and yields to any readback that falls
due meanwhile (it is queued with scheduled time 0, so every due readback is "later");
it then starts its read again. Each fresh read, once stored, is named in the job's
checkpoint, so a resumed job reads only the repeats still missing. The logits and the
summary are stored in one write at the end; a job finding them stored completes at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection

from hwctl.inference.inputs import Inputs
from hwctl.inference.results import Outcome
from hwctl.inference.run import ChipNetwork
from hwctl.inference.spec import InferenceSpec
from hwctl.jobs.context import JobContext, JobError, JobOvertaken, JobPayload, JobType
from hwctl.mapping import DeviceMap
from hwctl.nn.calibration import needs_calibration
from hwctl.nn.network_spec import network_spec
from hwctl.settings import get_settings
from hwctl.store import inferences as store_inferences
from hwctl.store import readouts as store_readouts
from hwctl.store.campaign import load_spec
from hwctl.store.datasets import inference_calibration_ref, load_evaluation_images, load_inputs
from hwctl.store.networks import load_network
from hwctl.vocabulary import JobKind, JobLane

HEARTBEAT_EVERY_S = 0.5  # progress commits at most this often while computing
FRESH_READ_SCHEDULED_S = 0.0  # before any readback's scheduled time: every due readback overtakes it


class InferPayload(JobPayload):
    inference_id: int
    run_id: int


@dataclass(frozen=True)
class _Reference:
    """The mean of the read draws stored at the run's first offset, and which they are."""

    g_us: npt.NDArray[np.float32]
    readout_ids: list[int]


@dataclass(frozen=True)
class _Loaded:
    spec: InferenceSpec
    network: ChipNetwork
    inputs: Inputs
    t0: _Reference | None  # GDC's reference: the mean of the run's t0 reads
    stored_readout: store_readouts.Readout | None
    programmed_end_s: float
    done: bool


def _load(ctx: JobContext, payload: InferPayload, conn: Connection) -> _Loaded:
    """The inference row and what it runs on; what does not change between jobs (the
    network bound to its run's device map, the inputs, the run's t0 readout and programming
    end) is built once per worker lane."""
    record = store_inferences.get_inference(conn, payload.inference_id)
    spec = InferenceSpec.model_validate(record.settings)

    def network() -> ChipNetwork:
        experiment = load_spec(conn, payload.experiment_id)
        checkpoint = load_network(conn, experiment.network_id)
        calibration_ref = inference_calibration_ref(experiment.evaluation, network_spec(checkpoint).dataset)
        calibration = None
        if calibrated and calibration_ref is not None:  # None: ChipNetwork.check refuses AdaBS
            n_images = spec.calibration_images
            calibration = load_evaluation_images(conn, calibration_ref, "calibration", n_images)
        device_map = store_readouts.load_run_device_map(conn, payload.run_id)
        return ChipNetwork(checkpoint, device_map, calibration, spec.gdc_statistic)

    def run_t0() -> tuple[_Reference | None, float]:
        t0 = _Reference(*store_readouts.t0_mean_us(conn, payload.run_id)) if t0_ids else None
        return t0, store_inferences.run_programmed_end_s(conn, payload.run_id)

    # One network per statistic and calibration set: with and without one are different networks.
    calibrated = needs_calibration(spec.methods, spec.gdc_statistic)
    calibration_key = (calibrated, spec.calibration_images if calibrated else None)
    chip_network = ctx.cached(("chip_network", payload.run_id, spec.gdc_statistic, calibration_key), network)
    max_bytes = get_settings().max_upload_expanded_bytes
    inputs = ctx.cached(
        ("inputs", record.dataset_id), lambda: load_inputs(conn, record.dataset_id, max_bytes)
    )
    t0_ids = store_readouts.first_offset_readouts(conn, payload.run_id)  # a later t0 draw: a new mean
    t0, programmed_end_s = ctx.cached(("run_t0", payload.run_id, tuple(t0_ids)), run_t0)
    stored = None if record.readout_id is None else store_readouts.load_readout(conn, record.readout_id)
    return _Loaded(
        spec=spec, network=chip_network, inputs=inputs, t0=t0, stored_readout=stored,
        programmed_end_s=programmed_end_s, done=record.summary is not None,
    )  # fmt: skip


class _Progress:
    """safe_point at most every HEARTBEAT_EVERY_S (each is a committed write)."""

    def __init__(self, ctx: JobContext, checkpoint: dict[str, Any] | None = None) -> None:
        self.ctx, self.checkpoint, self.last = ctx, checkpoint, 0.0

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - self.last >= HEARTBEAT_EVERY_S:
            self.last = now
            self.ctx.safe_point(min(max(fraction, 0.0), 1.0), message, self.checkpoint)


@dataclass(frozen=True)
class _Read:
    readout_id: int
    g_us: npt.NDArray[np.float32]
    board_time_s: float


def _read_now(ctx: JobContext, payload: InferPayload, device_map: DeviceMap, programmed_end_s: float,
              progress: _Progress, repeat: int) -> _Read:  # fmt: skip
    """Read every device of the run afresh and store it as a readout of the run."""
    station = ctx.chip_station
    addresses = device_map.addresses
    n = addresses.size
    g_us = np.empty(n, np.float32)
    blocks: list[tuple[int, float]] = []
    temperature_c = station.temperature_c()
    for start in range(0, n, ctx.read_block_devices):
        stop = min(start + ctx.read_block_devices, n)
        read_s, g_us[start:stop] = station.read_block(addresses[start:stop])
        blocks.append((start, read_s))
        if stop < n:
            progress(0.0, f"fresh read {repeat + 1}: {stop}/{n} devices")
            if ctx.overtaken():
                raise JobOvertaken(f"inference job {ctx.job_id} yields to a due readback after {stop}/{n}")
    first_s = blocks[0][1]

    def store(conn: Connection) -> int:
        offset_s = store_inferences.free_offset_s(conn, payload.run_id, first_s - programmed_end_s)
        return store_readouts.add_readout(
            conn, payload.run_id, offset_s=offset_s, scheduled_s=first_s, board_time_s=first_s, g_us=g_us,
            temperature_c=temperature_c, block_starts=blocks,
        )  # fmt: skip

    return _Read(ctx.write("storing the fresh readout", store), g_us, first_s)


class _Phases:
    """Wall seconds per phase of the job, reported in its result (what a slow job spent)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def rounded(self) -> dict[str, float]:
        return {f"{phase}_s": round(s, 4) for phase, s in self.seconds.items()}


def handle(ctx: JobContext, payload: InferPayload) -> None:
    phases = _Phases()
    with phases("load"):
        got = ctx.read("loading the inference", lambda conn: _load(ctx, payload, conn))
    if got.done:  # stored before a crash, job not yet marked done
        ctx.complete({"inference_id": payload.inference_id})
        return
    if got.stored_readout is not None:
        stored = got.stored_readout
        reads = [_Read(stored.id, stored.g_us, stored.board_time_s)]
        with phases("infer"):
            outcomes = got.network.infer(got.inputs, stored.g_us, got.spec.settings(), _t0(got, stored.g_us),
                                         _Progress(ctx))  # fmt: skip
    else:
        reads, outcomes = _infer_now(ctx, payload, got, phases)
    logits, summary = _summarise(got, reads, outcomes)

    def store(conn: Connection) -> None:
        store_inferences.store_results(conn, payload.inference_id, logits, summary, reads[0].readout_id)

    with phases("store"):
        ctx.write("storing the inference", store)
    accuracy = {f"{r['method']}/{r['repeat']}": r.get("accuracy_pct") for r in summary["results"]}
    ctx.complete({"inference_id": payload.inference_id, "readout_ids": [r.readout_id for r in reads],
                  "accuracy_pct": accuracy, **phases.rounded()})  # fmt: skip


def _infer_now(
    ctx: JobContext, payload: InferPayload, got: _Loaded, phases: _Phases
) -> tuple[list[_Read], list[Outcome]]:
    """One fresh read per repeat, each run through the network; reads kept in the checkpoint.

    The chip must still hold the run it was queued for (checked again: another experiment
    may have been programmed on the station since)."""
    spec = got.spec
    try:
        held = ctx.read("checking the chip", _held_run(payload.experiment_id))
    except store_inferences.ChipNotHeldError as exc:
        raise JobError(str(exc)) from None
    if held != payload.run_id:
        raise JobError(f"the chip holds programming run {held} now, not run {payload.run_id} "
                       "this job was queued for")  # fmt: skip
    kept_ids = [int(i) for i in (ctx.checkpoint or {}).get("readout_ids", [])]
    reads: list[_Read] = []
    outcomes: list[Outcome] = []
    for repeat in range(spec.repeats):
        progress = _Progress(ctx, {"readout_ids": [r.readout_id for r in reads]})
        with phases("read"):
            if repeat < len(kept_ids):
                kept = ctx.read("loading a fresh readout", _readout_loader(kept_ids[repeat]))
                read = _Read(kept.id, kept.g_us, kept.board_time_s)
            else:
                device_map = got.network.evaluator.device_map
                read = _read_now(ctx, payload, device_map, got.programmed_end_s, progress, repeat)
        reads.append(read)
        ctx.safe_point(repeat / spec.repeats, f"fresh read {repeat + 1} stored",
                       {"readout_ids": [r.readout_id for r in reads]})  # fmt: skip

        def scaled(fraction: float, message: str, at: int = repeat, tick: _Progress = progress) -> None:
            tick((at + fraction) / spec.repeats, message)

        with phases("infer"):
            settings = spec.settings(repeats=1)
            for o in got.network.infer(got.inputs, read.g_us, settings, _t0(got, read.g_us), scaled):
                outcomes.append(Outcome(o.method, repeat, o.logits))
    return reads, outcomes


def _held_run(experiment_id: int) -> Callable[[Connection], int]:
    return lambda conn: store_inferences.run_held_on_chip(conn, experiment_id)


def _readout_loader(readout_id: int) -> Callable[[Connection], store_readouts.Readout]:
    return lambda conn: store_readouts.load_readout(conn, readout_id)


def _t0(got: _Loaded, g_t_us: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The GDC reference: the mean of the run's t0 reads, else (no readout yet) this one."""
    return g_t_us if got.t0 is None else got.t0.g_us


def _summarise(
    got: _Loaded, reads: list[_Read], outcomes: list[Outcome]
) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
    """Logits (methods, repeats, images, classes) and the JSON summary of every outcome."""
    methods = list(dict.fromkeys(o.method for o in outcomes))
    repeats = max(o.repeat for o in outcomes) + 1
    by_key = {(o.method, o.repeat): o for o in outcomes}
    logits = np.stack([np.stack([by_key[(m, r)].logits for r in range(repeats)]) for m in methods])
    read_of = {r: reads[min(r, len(reads) - 1)] for r in range(repeats)}
    labels = got.inputs.y
    results = []
    for o in outcomes:
        entry: dict[str, Any] = {"method": str(o.method), "repeat": o.repeat,
                                 "readout_id": read_of[o.repeat].readout_id}  # fmt: skip
        if labels is not None:
            entry |= o.scores(labels, got.spec.top_k).to_json()
        results.append(entry)
    summary = {
        "n_images": len(got.inputs), "n_classes": int(logits.shape[-1]), "labelled": labels is not None,
        "methods": [str(m) for m in methods], "repeats": repeats,
        "t0_readout_id": None if got.t0 is None else got.t0.readout_ids[0],
        "t0_readout_ids": [] if got.t0 is None else got.t0.readout_ids,
        "readouts": [{"readout_id": r.readout_id, "board_time_s": r.board_time_s,
                      "t_since_program_s": r.board_time_s - got.programmed_end_s} for r in reads],
        "results": results,
    }  # fmt: skip
    return logits.astype(np.float32), summary


JOB = JobType(JobKind.INFER, JobLane.COMPUTE, InferPayload, handle)
