"""Programming results and readouts: whole-chip vectors in, one device's history out.

A readout row holds the conductance of every device of a programming run as one
float32 blob in canonical device order (`hwctl.mapping`). Each device's time since
programming is its read time (`device_read_times_s`: its block's start, `board_time_s`
for rows without blocks) − `programmed_s[device]`, the run's per-device programming end
time (board seconds, float64).

A readback under way keeps the blocks it has read as `readout_blocks` rows (its
checkpoint, one vector per block, written with the job's heartbeat); finishing writes
the readout row and drops the blocks in one transaction. A future chunked readout row
(readouts too large for one blob) can take those block rows over instead of copying them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, delete, func, insert, select, update

from hwctl.mapping import DeviceMap
from hwctl.program_verify import ProgrammingResult
from hwctl.store.engine import BINARY_RESULTS, is_sqlite
from hwctl.store.errors import NotFoundError, StoreError
from hwctl.store.schema import mappings, programming_runs, readout_blocks, readouts, utc_now
from hwctl.store.vectors import decode_row, encode

Floats = npt.NDArray[np.float64]
G_BYTES = 4  # readout conductances are float32
T_BYTES = 8  # programming end times are float64


@dataclass(frozen=True)
class Readout:
    id: int
    run_id: int
    offset_s: float
    scheduled_s: float
    board_time_s: float
    read_at: datetime
    temperature_c: float | None
    g_us: npt.NDArray[np.float32]


@dataclass(frozen=True)
class ReadoutInfo:
    """A readout without its vector: when it was scheduled and taken, how many devices."""

    id: int
    run_id: int
    offset_s: float
    scheduled_s: float
    board_time_s: float
    read_at: datetime
    temperature_c: float | None
    n_devices: int


# The columns of `ReadoutInfo`, for queries that list readouts their own way.
READOUT_INFO_COLUMNS = (
    readouts.c.id, readouts.c.run_id, readouts.c.offset_s, readouts.c.scheduled_s, readouts.c.board_time_s,
    readouts.c.read_at, readouts.c.temperature_c, readouts.c.g_len.label("n_devices"),
)  # fmt: skip


@dataclass(frozen=True)
class ReadoutBlock:
    """Devices `first_device`… of a readback under way, read at board time `read_s`."""

    first_device: int
    read_s: float
    g_us: npt.NDArray[np.float32]


@dataclass(frozen=True)
class DeviceSeries:
    """One device's readings: time since it was programmed and conductance."""

    device: int
    t_s: Floats
    g_us: npt.NDArray[np.float32]


def start_programming_run(
    conn: Connection, mapping_id: int, settings: dict[str, Any], experiment_id: int | None = None
) -> int:
    return int(
        conn.execute(
            insert(programming_runs)
            .values(mapping_id=mapping_id, experiment_id=experiment_id, settings=settings)
            .returning(programming_runs.c.id)
        ).scalar_one()
    )


def finish_programming_run(conn: Connection, run_id: int, result: ProgrammingResult) -> None:
    """Record the per-device outcome (the addresses and targets are the run's mapping's);
    every vector must cover the same devices."""
    vectors = (result.addresses, result.target_g_us, result.g_final_us, result.iterations, result.status,
               result.programmed_s)  # fmt: skip
    sizes = {v.size for v in vectors}
    if len(sizes) != 1:
        raise StoreError(f"programming result vectors differ in length: {sorted(sizes)}")
    values = {
        **encode(result.g_final_us, "float32").columns("g_final"),
        **encode(result.iterations, "int32").columns("iterations"),
        **encode(result.status, "uint8").columns("status"),
        **encode(result.programmed_s, "float64").columns("programmed_s"),
        "ended_at": utc_now(),
    }
    done = conn.execute(update(programming_runs).where(programming_runs.c.id == run_id).values(**values))
    if done.rowcount != 1:
        raise NotFoundError(f"programming run {run_id} does not exist")


def run_finished(conn: Connection, run_id: int) -> bool:
    """Whether the run's per-device outcome is stored."""
    ended = conn.execute(select(programming_runs.c.ended_at).where(programming_runs.c.id == run_id)).scalar()
    return ended is not None


def load_programming_result(conn: Connection, run_id: int) -> ProgrammingResult:
    query = (
        select(programming_runs, mappings.c.device_map)
        .join(mappings, mappings.c.id == programming_runs.c.mapping_id)
        .where(programming_runs.c.id == run_id)
    )
    row = conn.execute(query, execution_options=BINARY_RESULTS).one_or_none()
    if row is None:
        raise NotFoundError(f"programming run {run_id} does not exist")
    if row.ended_at is None:
        raise StoreError(f"programming run {run_id} has not finished: no per-device results yet")
    what = f"programming run {run_id}"
    device_map = DeviceMap.from_bytes(row.device_map)
    return ProgrammingResult(
        addresses=device_map.addresses,
        target_g_us=device_map.target_g_us,
        g_final_us=decode_row(row, "g_final", what=f"{what} g_final"),
        iterations=decode_row(row, "iterations", what=f"{what} iterations"),
        status=decode_row(row, "status", what=f"{what} status"),
        programmed_s=decode_row(row, "programmed_s", what=f"{what} programmed_s"),
    )


def load_run_device_map(conn: Connection, run_id: int) -> DeviceMap:
    """The device map a programming run was written with."""
    stored = conn.execute(
        select(mappings.c.device_map)
        .join(programming_runs, programming_runs.c.mapping_id == mappings.c.id)
        .where(programming_runs.c.id == run_id)
    ).scalar()
    if stored is None:
        raise NotFoundError(f"programming run {run_id} does not exist or has no mapping")
    return DeviceMap.from_bytes(stored)


def add_readout(
    conn: Connection,
    run_id: int,
    *,
    offset_s: float,
    scheduled_s: float,
    board_time_s: float,
    g_us: npt.ArrayLike,
    temperature_c: float | None = None,
    block_starts: list[tuple[int, float]] | None = None,
    suspect: str | None = None,
) -> int:
    """Store one whole-chip readout as a single row (one write); returns its id.

    `block_starts`: (first device, board s) of each read block; None: one block read at
    `board_time_s`. `suspect`: why the readout must not be trusted (the board lost its state).
    """
    values = {
        "run_id": run_id,
        "offset_s": offset_s,
        "scheduled_s": scheduled_s,
        "board_time_s": board_time_s,
        "read_at": utc_now(),
        "temperature_c": temperature_c,
        "block_starts": None if block_starts is None else [[int(f), float(t)] for f, t in block_starts],
        "suspect": suspect,
        **encode(g_us, "float32").columns("g"),
    }
    return int(conn.execute(insert(readouts).values(**values).returning(readouts.c.id)).scalar_one())


def find_readout(conn: Connection, run_id: int, offset_s: float) -> int | None:
    """The id of the run's readout at `offset_s`, if it is stored."""
    found = conn.execute(
        select(readouts.c.id).where(readouts.c.run_id == run_id, readouts.c.offset_s == offset_s)
    ).scalar()
    return None if found is None else int(found)


def add_readout_block(conn: Connection, job_id: int, block: ReadoutBlock) -> None:
    """Keep one read block of the readback `job_id` (its checkpoint); one kept before under
    the same first device (a retried write) is replaced."""
    conn.execute(
        delete(readout_blocks).where(
            readout_blocks.c.job_id == job_id, readout_blocks.c.first_device == block.first_device
        )
    )
    values = {"job_id": job_id, "first_device": block.first_device, "read_s": block.read_s,
              **encode(block.g_us, "float32").columns("g")}  # fmt: skip
    conn.execute(insert(readout_blocks).values(**values))


def load_readout_blocks(conn: Connection, job_id: int) -> list[ReadoutBlock]:
    """The blocks the readback `job_id` has kept, in device order, checksums verified."""
    query = (
        select(readout_blocks)
        .where(readout_blocks.c.job_id == job_id)
        .order_by(readout_blocks.c.first_device)
    )
    return [
        ReadoutBlock(
            row.first_device, row.read_s, decode_row(row, "g", what=f"job {job_id} block {row.first_device}")
        )
        for row in conn.execute(query, execution_options=BINARY_RESULTS)
    ]


def drop_readout_blocks(conn: Connection, job_id: int) -> None:
    """Forget the blocks of a readback whose readout row is written (same transaction)."""
    conn.execute(delete(readout_blocks).where(readout_blocks.c.job_id == job_id))


def load_readout(conn: Connection, readout_id: int) -> Readout:
    """The readout with its conductances, length and checksum verified."""
    query = select(readouts).where(readouts.c.id == readout_id)
    row = conn.execute(query, execution_options=BINARY_RESULTS).one_or_none()
    if row is None:
        raise NotFoundError(f"readout {readout_id} does not exist")
    return Readout(
        id=row.id,
        run_id=row.run_id,
        offset_s=row.offset_s,
        scheduled_s=row.scheduled_s,
        board_time_s=row.board_time_s,
        read_at=row.read_at,
        temperature_c=row.temperature_c,
        g_us=decode_row(row, "g", what=f"readout {readout_id}"),
    )


def device_series(conn: Connection, run_id: int, device: int) -> DeviceSeries:
    """One device's conductance over every readout of a run, in time order.

    Reads 4 bytes per readout (and 8 of the programming times) by byte offset, never
    whole vectors: `substr` on PostgreSQL (uncompressed out-of-line bytea is sliced
    without being fetched whole), incremental blob I/O on SQLite (whose `substr` would
    load every blob). Checksums cover whole vectors, so only lengths are checked here.
    """
    if device < 0:
        raise StoreError(f"device index must be ≥ 0, got {device}")
    run = conn.execute(
        select(programming_runs.c.programmed_s_len).where(programming_runs.c.id == run_id)
    ).one_or_none()
    if run is None:
        raise NotFoundError(f"programming run {run_id} does not exist")
    if run.programmed_s_len is None:
        raise StoreError(f"programming run {run_id} has not finished: no per-device programming times")
    if is_sqlite(conn):
        return _sqlite_device_series(conn, run_id, device, run.programmed_s_len)
    query = (
        select(
            readouts.c.board_time_s,
            readouts.c.block_starts,
            readouts.c.g_len,
            func.substr(readouts.c.g_blob, device * G_BYTES + 1, G_BYTES).label("g"),
            func.substr(programming_runs.c.programmed_s_blob, device * T_BYTES + 1, T_BYTES).label("t0"),
        )
        .join(programming_runs, programming_runs.c.id == readouts.c.run_id)
        .where(readouts.c.run_id == run_id)
        .order_by(readouts.c.board_time_s)
    )
    rows = conn.execute(query).all()
    _check_device(device, run_id, [r.g_len for r in rows], run.programmed_s_len)
    t0 = rows[0].t0 if rows else b""
    return _series(device, [_read_time_s(r, device) for r in rows], [r.g for r in rows], t0)


def _sqlite_device_series(conn: Connection, run_id: int, device: int, n_programmed: int) -> DeviceSeries:
    columns = select(readouts.c.id, readouts.c.board_time_s, readouts.c.block_starts, readouts.c.g_len)
    rows = conn.execute(columns.where(readouts.c.run_id == run_id).order_by(readouts.c.board_time_s)).all()
    _check_device(device, run_id, [r.g_len for r in rows], n_programmed)
    raw = conn.connection.driver_connection  # sqlite3.Connection: blob I/O is not in SQLAlchemy

    def read(table: str, column: str, rowid: int, offset: int, width: int) -> bytes:
        with raw.blobopen(table, column, rowid, readonly=True) as blob:  # type: ignore[union-attr]
            blob.seek(offset)
            return bytes(blob.read(width))

    g = [read("readouts", "g_blob", r.id, device * G_BYTES, G_BYTES) for r in rows]
    t0 = read("programming_runs", "programmed_s_blob", run_id, device * T_BYTES, T_BYTES)
    return _series(device, [_read_time_s(r, device) for r in rows], g, t0)


def _check_device(device: int, run_id: int, readout_lengths: list[int], n_programmed: int) -> None:
    n_devices = min([n_programmed, *readout_lengths])
    if device >= n_devices:
        raise StoreError(f"device {device} outside run {run_id}'s {n_devices} devices")


def _block_starts(row: Any) -> list[tuple[int, float]]:
    """(first device, board s) of each block of a readout row; rows stored before the
    blocks were recorded count as one block read at `board_time_s`."""
    return [(int(first), float(t_s)) for first, t_s in (row.block_starts or [[0, row.board_time_s]])]


def _read_time_s(row: Any, device: int) -> float:
    """When `device` was read in this readout: the start of the block that holds it."""
    holding = [t_s for first, t_s in _block_starts(row) if first <= device]
    return holding[-1] if holding else float(row.board_time_s)


def _series(device: int, board_time_s: list[float], g_bytes: list[bytes], t0_bytes: bytes) -> DeviceSeries:
    if not g_bytes:
        return DeviceSeries(device, np.empty(0), np.empty(0, np.float32))
    g_us = np.frombuffer(b"".join(g_bytes), "<f4").astype(np.float32)
    t0_s = float(np.frombuffer(t0_bytes, "<f8")[0])
    return DeviceSeries(device, np.asarray(board_time_s, np.float64) - t0_s, g_us)


def device_read_times_s(conn: Connection, readout_id: int) -> npt.NDArray[np.float64]:
    """When each device of a readout was read (board s): its block's start time.

    A whole-chip readout spans seconds of wall time, hours of board time on an accelerated
    clock; readouts stored before the blocks were recorded count from their first block.
    """
    row = conn.execute(
        select(readouts.c.board_time_s, readouts.c.block_starts, readouts.c.g_len).where(
            readouts.c.id == readout_id
        )
    ).one()
    starts = _block_starts(row)
    firsts = [first for first, _ in starts] + [int(row.g_len)]
    return np.repeat([t_s for _, t_s in starts], np.diff(firsts)).astype(np.float64)


def list_readouts(conn: Connection, run_id: int) -> list[ReadoutInfo]:
    """A run's readouts in schedule order, without their vectors."""
    query = select(*READOUT_INFO_COLUMNS).where(readouts.c.run_id == run_id)
    return [ReadoutInfo(**row._asdict()) for row in conn.execute(query.order_by(readouts.c.offset_s))]


def run_readouts(conn: Connection, run_id: int) -> list[tuple[int, float]]:
    """(readout id, offset s) of a run's readouts, in schedule order."""
    return [(r.id, r.offset_s) for r in list_readouts(conn, run_id)]
