"""The readback job: read every mapped device of a run in blocks, store one readout row.

Each block is kept in the store (`readout_blocks`) with the job's heartbeat, in one
transaction, so a restart resumes from the last committed block and a cancel or
shutdown waits for at most one block; the JSON checkpoint holds only where to go on.
The readout row is written, and the blocks dropped, in one transaction at the end; then
the readout's evaluation is queued and, after the run's last readback, the drift fit
brought forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection

from hwctl import queue
from hwctl.jobs import analyze, evaluate
from hwctl.jobs.context import JobContext, JobError, JobOvertaken, JobPayload, JobType
from hwctl.mapping import DeviceMap
from hwctl.store import readouts as store_readouts
from hwctl.store.campaign import experiment_state, load_spec
from hwctl.store.readouts import ReadoutBlock
from hwctl.vocabulary import ExperimentStatus, JobKind, JobLane


class ReadbackPayload(JobPayload):
    run_id: int
    offset_s: float  # scheduled offset after programming
    scheduled_s: float  # scheduled board time


@dataclass
class PartialReadout:
    """The blocks of one readback read so far."""

    g_us: npt.NDArray[np.float32]
    blocks: list[tuple[int, float]] = field(default_factory=list)  # (first device, board s read)
    next_device: int = 0
    temperature_c: float | None = None

    def add(self, block: ReadoutBlock) -> None:
        if block.first_device != self.next_device:
            raise JobError(f"block at device {block.first_device} does not follow device {self.next_device}")
        stop = block.first_device + block.g_us.size
        if stop > self.g_us.size:
            raise JobError(
                f"block at device {block.first_device} runs past the run's {self.g_us.size} devices"
            )
        self.g_us[block.first_device : stop] = block.g_us
        self.blocks.append((block.first_device, block.read_s))
        self.next_device = stop

    def checkpoint(self) -> dict[str, Any]:
        """Where to go on; the values themselves are in the stored blocks."""
        return {"next_device": self.next_device, "temperature_c": self.temperature_c}

    @classmethod
    def resume(
        cls, n_devices: int, checkpoint: dict[str, Any] | None, stored: list[ReadoutBlock]
    ) -> PartialReadout:
        """The readout as far as its committed blocks go (they commit with the checkpoint)."""
        partial = cls(np.zeros(n_devices, np.float32))
        for block in stored:
            partial.add(block)
        if checkpoint:
            if int(checkpoint["next_device"]) != partial.next_device:
                raise JobError(
                    f"readback checkpoint says device {checkpoint['next_device']}, "
                    f"its stored blocks reach {partial.next_device}"
                )
            partial.temperature_c = checkpoint.get("temperature_c")
        return partial


def partial_block_writer(job_id: int, block: ReadoutBlock) -> Callable[[Connection], None]:
    """Stores `block` in the transaction of the heartbeat that checkpoints it."""
    return lambda conn: store_readouts.add_readout_block(conn, job_id, block)


def handle(ctx: JobContext, payload: ReadbackPayload) -> None:
    def stored(conn: Connection) -> tuple[int | None, list[ReadoutBlock], DeviceMap]:
        readout_id = store_readouts.find_readout(conn, payload.run_id, payload.offset_s)
        blocks = store_readouts.load_readout_blocks(conn, ctx.job_id) if readout_id is None else []
        device_map = ctx.cached(
            ("device_map", payload.run_id), lambda: store_readouts.load_run_device_map(conn, payload.run_id)
        )
        return readout_id, blocks, device_map

    readout_id, blocks, device_map = ctx.read("loading the readback", stored)
    if readout_id is not None:  # stored before a crash, job not yet marked done
        ctx.complete({"readout_id": readout_id})
        return
    addresses = device_map.addresses
    n = addresses.size
    partial = PartialReadout.resume(n, ctx.checkpoint, blocks)
    station = ctx.chip_station
    if partial.temperature_c is None:
        partial.temperature_c = station.temperature_c()
    while partial.next_device < n:
        start, stop = partial.next_device, min(partial.next_device + ctx.read_block_devices, n)
        block = ReadoutBlock(start, *station.read_block(addresses[start:stop]))
        partial.add(block)
        if stop < n:
            keep = partial_block_writer(ctx.job_id, block)
            ctx.safe_point(stop / n, f"read {stop}/{n} devices", partial.checkpoint(), keep)
            if ctx.overtaken():  # the later point is read on time; this one resumes after it
                raise JobOvertaken(f"job {ctx.job_id} yields after {stop}/{n} devices")
    readout_id = ctx.write("storing the readout", lambda conn: _store(conn, ctx, payload, partial))
    first_s = partial.blocks[0][1]
    ctx.complete({
        "readout_id": readout_id, "late_s": first_s - payload.scheduled_s,
        "block_starts_s": [t_s for _, t_s in partial.blocks], "n_devices": int(partial.g_us.size),
    })  # fmt: skip


def _store(conn: Connection, ctx: JobContext, payload: ReadbackPayload, partial: PartialReadout) -> int:
    """The readout row (flagged if the board lost its state), its blocks dropped, its
    evaluation queued and, after the run's last readback, the drift fit brought forward."""
    found = store_readouts.find_readout(conn, payload.run_id, payload.offset_s)
    if found is not None:  # stored by a commit whose answer was lost
        return found
    spec = load_spec(conn, payload.experiment_id)
    state = experiment_state(conn, payload.experiment_id)
    first_s, last_s = partial.blocks[0][1], partial.blocks[-1][1]
    readout_id = store_readouts.add_readout(
        conn, payload.run_id, offset_s=payload.offset_s, scheduled_s=payload.scheduled_s,
        board_time_s=first_s, g_us=partial.g_us, temperature_c=partial.temperature_c,
        block_starts=partial.blocks,
        suspect=state.reason if state.status == ExperimentStatus.BOARD_STATE_LOST else None,
    )  # fmt: skip
    store_readouts.drop_readout_blocks(conn, ctx.job_id)
    if spec.evaluation.enabled:
        evaluation = evaluate.EvaluatePayload(
            experiment_id=payload.experiment_id, run_id=payload.run_id, readout_id=readout_id
        )
        job = evaluate.JOB.new_job(ctx.station_id, evaluation, run_at_s=last_s, key=f"evaluate:{readout_id}")
        queue.enqueue_in(conn, **job)
    if not queue.readbacks_pending(conn, payload.run_id, ctx.job_id):
        queue.bring_forward_in(conn, analyze.key(payload.run_id), last_s)
    return readout_id


JOB = JobType(JobKind.READBACK, JobLane.CHIP, ReadbackPayload, handle)
