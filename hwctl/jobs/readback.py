"""The readback job: read every mapped device of a run in blocks, store one readout row.

Each block is kept in the store (`readout_blocks`) with the job's heartbeat, in one
transaction, so a restart resumes from the last committed block and a cancel or
shutdown waits for at most one block; the JSON checkpoint holds only where to go on.
The worker holds one block, never the readout, and computes each block's addresses from
the map's placement (never holding the map's 8 bytes a device). At the end the last block
and the readout row are written in one transaction, the row taking the job's blocks over
as its storage (no copy); then the readout's evaluation is queued and, after the run's
last readback, the drift fit brought forward.

A schedule with `reads_per_point` > 1 queues one readback per draw at each offset, with the
same scheduled time (none overtakes another) in draw order: consecutive whole reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field
from sqlalchemy import Connection

from drivers.base import Geometry
from hwctl import queue
from hwctl.jobs import analyze, evaluate
from hwctl.jobs.context import JobContext, JobError, JobOvertaken, JobPayload, JobType
from hwctl.mapping import LayerPlacement
from hwctl.store import readouts as store_readouts
from hwctl.store.campaign import experiment_state, load_spec
from hwctl.store.readouts import BlockExtent, ReadoutBlock
from hwctl.store.run_parts import addresses_in_range, run_placement
from hwctl.vocabulary import ExperimentStatus, JobKind, JobLane


class ReadbackPayload(JobPayload):
    run_id: int
    offset_s: float  # scheduled offset after programming
    scheduled_s: float  # scheduled board time
    draw: int = Field(0, ge=0)  # which read of the offset (payloads queued before draws: 0)


def key(run_id: int, offset_s: float, draw: int) -> str:
    """The readback's idempotency key: one per run, offset and draw."""
    return f"readback:{run_id}:{offset_s}:{draw}"


@dataclass
class PartialReadout:
    """Where a readback stands: the blocks stored so far (their values are in the store only)."""

    n_devices: int
    blocks: list[tuple[int, float]] = field(default_factory=list)  # (first device, board s read)
    next_device: int = 0
    temperature_c: float | None = None

    def add(self, first_device: int, n_devices: int, read_s: float) -> None:
        if first_device != self.next_device:
            raise JobError(f"block at device {first_device} does not follow device {self.next_device}")
        stop = first_device + n_devices
        if stop > self.n_devices:
            raise JobError(f"block at device {first_device} runs past the run's {self.n_devices} devices")
        self.blocks.append((first_device, read_s))
        self.next_device = stop

    def checkpoint(self) -> dict[str, Any]:
        """Where to go on; the values themselves are in the stored blocks."""
        return {"next_device": self.next_device, "temperature_c": self.temperature_c}

    @classmethod
    def resume(
        cls, n_devices: int, checkpoint: dict[str, Any] | None, stored: list[BlockExtent]
    ) -> PartialReadout:
        """The readout as far as its committed blocks go (they commit with the checkpoint)."""
        partial = cls(n_devices)
        for block in stored:
            partial.add(block.first_device, block.n_devices, block.read_s)
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


Placement = tuple[Geometry, tuple[LayerPlacement, ...]]


def handle(ctx: JobContext, payload: ReadbackPayload) -> None:
    def stored(conn: Connection) -> tuple[int | None, list[BlockExtent], Placement]:
        readout_id = store_readouts.find_readout(conn, payload.run_id, payload.offset_s, payload.draw)
        blocks = store_readouts.readout_block_extents(conn, ctx.job_id) if readout_id is None else []
        # The map's placement (kilobytes), not its addresses and targets (8 bytes a device):
        # each block's addresses are computed from it.
        placement = ctx.cached(("placement", payload.run_id), lambda: run_placement(conn, payload.run_id))
        return readout_id, blocks, placement

    readout_id, blocks, (geometry, layers) = ctx.read("loading the readback", stored)
    if readout_id is not None:  # stored before a crash, job not yet marked done
        ctx.complete({"readout_id": readout_id})
        return
    n = sum(2 * layer.n_weights for layer in layers)
    partial = PartialReadout.resume(n, ctx.checkpoint, blocks)
    station = ctx.chip_station
    if partial.temperature_c is None:
        partial.temperature_c = station.temperature_c()
    last: ReadoutBlock | None = None  # read, stored with the readout row
    while partial.next_device < n:
        start, stop = partial.next_device, min(partial.next_device + ctx.read_block_devices, n)
        block = ReadoutBlock(start, *station.read_block(addresses_in_range(geometry, layers, start, stop)))
        partial.add(block.first_device, block.g_us.size, block.read_s)
        if stop < n:
            keep = partial_block_writer(ctx.job_id, block)
            ctx.safe_point(stop / n, f"read {stop}/{n} devices", partial.checkpoint(), keep)
            if ctx.overtaken():  # the later point is read on time; this one resumes after it
                raise JobOvertaken(f"job {ctx.job_id} yields after {stop}/{n} devices")
        else:
            last = block
    readout_id = ctx.write("storing the readout", lambda conn: _store(conn, ctx, payload, partial, last))
    first_s = partial.blocks[0][1]
    ctx.complete({
        "readout_id": readout_id, "late_s": first_s - payload.scheduled_s,
        "block_starts_s": [t_s for _, t_s in partial.blocks], "n_devices": n,
    })  # fmt: skip


def _store(
    conn: Connection,
    ctx: JobContext,
    payload: ReadbackPayload,
    partial: PartialReadout,
    last: ReadoutBlock | None,
) -> int:
    """The readout row (flagged if the board lost its state) taking over the job's blocks
    with the last one, its evaluation queued and, after the run's last readback, the drift
    fit brought forward."""
    found = store_readouts.find_readout(conn, payload.run_id, payload.offset_s, payload.draw)
    if found is not None:  # stored by a commit whose answer was lost
        return found
    spec = load_spec(conn, payload.experiment_id)
    state = experiment_state(conn, payload.experiment_id)
    if last is not None:
        store_readouts.add_readout_block(conn, ctx.job_id, last)
    first_s, last_s = partial.blocks[0][1], partial.blocks[-1][1]
    readout_id = store_readouts.finish_readout(
        conn, payload.run_id, ctx.job_id, n_devices=partial.n_devices, offset_s=payload.offset_s,
        scheduled_s=payload.scheduled_s, board_time_s=first_s, block_starts=partial.blocks,
        temperature_c=partial.temperature_c, draw=payload.draw,
        suspect=state.reason if state.status == ExperimentStatus.BOARD_STATE_LOST else None,
    )  # fmt: skip
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
