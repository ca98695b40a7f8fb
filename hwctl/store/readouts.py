"""Programming results and readouts: whole-chip vectors in blocks, one device's history out.

A readout's conductances (float32, canonical device order, `hwctl.mapping`) are stored
as `readout_blocks` rows, each a contiguous run of devices with its own length and
CRC-32; the readout row holds the device count (`g_len`) with an empty blob. A readback
writes each block as its checkpoint while it reads (with the job's heartbeat); its last
block and the readout row then re-key the job's blocks to the readout in one
transaction, so a 43.6 M-device readout (170 MB) is never copied, held whole, or
written in one statement. Readers stream it block by block (`iter_readout_blocks`) or
in device ranges (`iter_readout_ranges`); memory is one block, not the readout. Rows
stored whole before revision 0008 (`g_blob` set) are read by the same functions.

Each device's time since programming is its read time (`device_read_times_s`: its block's
start, `board_time_s` for rows without blocks) − `programmed_s[device]`, the run's
per-device programming end time (board seconds, float64).

A campaign may read the chip several times at one scheduled offset (`draw` 0, 1, …: whole
consecutive reads of the run, draw 0 first); a run's readouts are ordered by offset, then draw.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Integer, and_, bindparam, delete, func, insert, select, update

from hwctl.mapping import DeviceMap
from hwctl.program_verify import ProgrammingResult
from hwctl.store.engine import BINARY_RESULTS, is_sqlite, let_go_after
from hwctl.store.errors import CorruptVectorError, NotFoundError, StoreError
from hwctl.store.schema import mappings, programming_runs, readout_blocks, readouts, utc_now
from hwctl.store.vectors import StreamedVector, decode_row, encode, store_row

Floats = npt.NDArray[np.float64]
G_BYTES = 4  # readout conductances are float32
T_BYTES = 8  # programming end times are float64
# Devices per stored block when a whole vector is handed in (1 MiB of float32, as the
# worker's read blocks): a 43.6 M-device readout is 167 inserts; every reader is bounded
# by it, and on SQLite one device's bytes are at most 32 overflow pages into its block.
STORED_BLOCK_DEVICES = 1 << 18
# Blocks per insert statement (executemany) when a whole vector is handed in: 8 MiB encoded.
INSERT_BATCH_BLOCKS = 8


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
    draw: int = 0


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
    draw: int = 0


# The columns of `ReadoutInfo`, for queries that list readouts their own way.
READOUT_INFO_COLUMNS = (
    readouts.c.id, readouts.c.run_id, readouts.c.offset_s, readouts.c.scheduled_s, readouts.c.board_time_s,
    readouts.c.read_at, readouts.c.temperature_c, readouts.c.g_len.label("n_devices"), readouts.c.draw,
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
    streamed = {
        "g_final": StreamedVector(result.g_final_us, "float32"),
        "iterations": StreamedVector(result.iterations, "int32"),
        "status": StreamedVector(result.status, "uint8"),
        "programmed_s": StreamedVector(result.programmed_s, "float64"),
    }
    statement = (
        update(programming_runs).where(programming_runs.c.id == run_id).returning(programming_runs.c.id)
    )
    if store_row(conn, statement, programming_runs, {"ended_at": utc_now()}, streamed) is None:
        raise NotFoundError(f"programming run {run_id} does not exist")


def run_finished(conn: Connection, run_id: int) -> bool:
    """Whether the run's per-device outcome is stored."""
    ended = conn.execute(select(programming_runs.c.ended_at).where(programming_runs.c.id == run_id)).scalar()
    return ended is not None


def load_programming_result(
    conn: Connection, run_id: int, device_map: DeviceMap | None = None
) -> ProgrammingResult:
    """The run's per-device outcome; `device_map`: the run's map when the caller holds it
    already (a 43.6 M-device map is 350 MB: not decoded twice)."""
    columns = [programming_runs] if device_map is not None else [programming_runs, mappings.c.device_map]
    query = (
        select(*columns)
        .join(mappings, mappings.c.id == programming_runs.c.mapping_id)
        .where(programming_runs.c.id == run_id)
    )
    row = conn.execute(query, execution_options=BINARY_RESULTS).one_or_none()
    if row is None:
        raise NotFoundError(f"programming run {run_id} does not exist")
    if row.ended_at is None:
        raise StoreError(f"programming run {run_id} has not finished: no per-device results yet")
    what = f"programming run {run_id}"
    device_map = device_map if device_map is not None else DeviceMap.from_bytes(row.device_map)
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
    let_go_after(conn, len(stored))
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
    draw: int = 0,
) -> int:
    """Store one whole-chip readout handed in as one vector, in blocks of
    `STORED_BLOCK_DEVICES`; returns its id.

    `block_starts`: (first device, board s) of each read block; None: one block read at
    `board_time_s`. `suspect`: why the readout must not be trusted (the board lost its state).
    `draw`: which read of the offset this is (0 first).
    """
    g = np.asarray(g_us, np.float32).ravel()
    starts = [(0, board_time_s)] if block_starts is None else block_starts
    readout_id = _insert_readout_row(
        conn, run_id, g.size, offset_s=offset_s, scheduled_s=scheduled_s, board_time_s=board_time_s,
        temperature_c=temperature_c, block_starts=block_starts, suspect=suspect, draw=draw,
    )  # fmt: skip
    batch: list[dict[str, Any]] = []  # encoded blocks: at most INSERT_BATCH_BLOCKS at a time
    for first in range(0, g.size, STORED_BLOCK_DEVICES):
        block = ReadoutBlock(first, _read_time_in(starts, first), g[first : first + STORED_BLOCK_DEVICES])
        batch.append({"readout_id": readout_id, "job_id": None, **_block_values(block)})
        if len(batch) == INSERT_BATCH_BLOCKS or first + STORED_BLOCK_DEVICES >= g.size:
            conn.execute(_INSERT_BLOCK, batch)  # one executemany per batch
            batch = []
    return readout_id


_INSERT_BLOCK = insert(readout_blocks)


def finish_readout(
    conn: Connection,
    run_id: int,
    job_id: int,
    *,
    n_devices: int,
    offset_s: float,
    scheduled_s: float,
    board_time_s: float,
    block_starts: list[tuple[int, float]],
    temperature_c: float | None = None,
    suspect: str | None = None,
    draw: int = 0,
) -> int:
    """The readout (read `draw` of its offset) of readback `job_id`, whose blocks
    (`add_readout_block`) cover devices 0…`n_devices`: its row is written and the job's
    blocks become the readout's, in the caller's transaction; nothing is copied. Returns
    the readout's id."""
    extents = readout_block_extents(conn, job_id)
    _check_cover(extents, n_devices, f"readback job {job_id}")
    readout_id = _insert_readout_row(
        conn, run_id, n_devices, offset_s=offset_s, scheduled_s=scheduled_s, board_time_s=board_time_s,
        temperature_c=temperature_c, block_starts=block_starts, suspect=suspect, draw=draw,
    )  # fmt: skip
    rekey = update(readout_blocks).where(readout_blocks.c.job_id == job_id)
    conn.execute(rekey.values(readout_id=readout_id, job_id=None))
    return readout_id


def _insert_readout_row(
    conn: Connection, run_id: int, n_devices: int, *, offset_s: float, scheduled_s: float,
    board_time_s: float, temperature_c: float | None, block_starts: list[tuple[int, float]] | None,
    suspect: str | None, draw: int,
) -> int:  # fmt: skip
    if draw < 0:
        raise StoreError(f"a read draw is 0 or more, got {draw}")
    values = {
        "run_id": run_id,
        "offset_s": offset_s,
        "draw": int(draw),
        "scheduled_s": scheduled_s,
        "board_time_s": board_time_s,
        "read_at": utc_now(),
        "temperature_c": temperature_c,
        "block_starts": None if block_starts is None else [[int(f), float(t)] for f, t in block_starts],
        "suspect": suspect,
        "g_blob": None,  # in readout_blocks
        "g_len": int(n_devices),
        "g_dtype": "float32",
        "g_crc32": None,
    }
    return int(conn.execute(insert(readouts).returning(readouts.c.id), values).scalar_one())


def _block_values(block: ReadoutBlock) -> dict[str, Any]:
    return {"first_device": int(block.first_device), "read_s": float(block.read_s),
            **encode(block.g_us, "float32").columns("g")}  # fmt: skip


def _check_cover(extents: list[BlockExtent], n_devices: int, what: str) -> None:
    """The blocks follow each other from device 0 and end at `n_devices`."""
    reached = 0
    for extent in extents:
        if extent.first_device != reached:
            raise StoreError(f"{what}: block at device {extent.first_device} does not follow {reached}")
        reached += extent.n_devices
    if reached != n_devices:
        raise StoreError(f"{what}: blocks cover {reached} devices, the readout has {n_devices}")


def find_readout(conn: Connection, run_id: int, offset_s: float, draw: int = 0) -> int | None:
    """The id of the run's readout `draw` at `offset_s`, if it is stored."""
    found = conn.execute(
        select(readouts.c.id).where(
            readouts.c.run_id == run_id, readouts.c.offset_s == offset_s, readouts.c.draw == draw
        )
    ).scalar()
    return None if found is None else int(found)


@dataclass(frozen=True)
class BlockExtent:
    """Where a stored block sits, without its values."""

    first_device: int
    read_s: float
    n_devices: int


def add_readout_block(conn: Connection, job_id: int, block: ReadoutBlock) -> None:
    """Keep one read block of the readback `job_id` (its checkpoint, later the readout's);
    one kept before under the same first device (a retried write) is replaced."""
    conn.execute(
        delete(readout_blocks).where(
            readout_blocks.c.job_id == job_id, readout_blocks.c.first_device == block.first_device
        )
    )
    conn.execute(_INSERT_BLOCK, {"job_id": job_id, "readout_id": None, **_block_values(block)})


def readout_block_extents(conn: Connection, job_id: int) -> list[BlockExtent]:
    """The blocks the readback `job_id` has kept, in device order, without their values."""
    query = (
        select(readout_blocks.c.first_device, readout_blocks.c.read_s, readout_blocks.c.g_len)
        .where(readout_blocks.c.job_id == job_id)
        .order_by(readout_blocks.c.first_device)
    )
    return [BlockExtent(int(r.first_device), float(r.read_s), int(r.g_len)) for r in conn.execute(query)]


def readout_info(conn: Connection, readout_id: int) -> ReadoutInfo:
    """The readout without its vector."""
    row = conn.execute(select(*READOUT_INFO_COLUMNS).where(readouts.c.id == readout_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"readout {readout_id} does not exist")
    return ReadoutInfo(**row._asdict())


# A readout's row with its blocks' (id, first device) in device order, from the index alone
# (SQLite keeps the columns after a blob, g_len…, behind its overflow pages); a readout
# without blocks gives one row with block_id NULL. Built once: SQLAlchemy compiles it once.
_BLOCK_INDEX = (
    select(*READOUT_INFO_COLUMNS, readouts.c.g_crc32, readout_blocks.c.id.label("block_id"),
           readout_blocks.c.first_device)
    .select_from(readouts.outerjoin(readout_blocks, readout_blocks.c.readout_id == readouts.c.id))
    .where(readouts.c.id == bindparam("readout_id"))
    .order_by(readout_blocks.c.first_device)
)  # fmt: skip
_G_VECTOR = ("g_blob", "g_len", "g_dtype", "g_crc32")
_BLOCK = select(*(readout_blocks.c[name] for name in _G_VECTOR)).where(
    readout_blocks.c.id == bindparam("block_id")
)
_WHOLE = select(*(readouts.c[name] for name in _G_VECTOR)).where(readouts.c.id == bindparam("readout_id"))


def _block_index(conn: Connection, readout_id: int) -> Sequence[Any]:
    rows = conn.execute(_BLOCK_INDEX, {"readout_id": readout_id}).all()
    if not rows:
        raise NotFoundError(f"readout {readout_id} does not exist")
    return rows


def _info(row: Any) -> ReadoutInfo:
    return ReadoutInfo(**{name: getattr(row, name) for name in ReadoutInfo.__dataclass_fields__})


def iter_readout_blocks(
    conn: Connection, readout_id: int, start_device: int = 0, stop_device: int | None = None
) -> Iterator[tuple[int, npt.NDArray[np.float32]]]:
    """(first device, conductances µS) of each stored block of a readout that holds a device
    of `start_device`…`stop_device` − 1 (default: all), in device order, each block's
    length and checksum verified as it is read; one block in memory at a time.

    A readout stored whole (before 0008) comes as one block. A gap, an overlap or a short
    end raises `CorruptVectorError` when reached.
    """
    yield from _iter_blocks(conn, readout_id, _block_index(conn, readout_id), start_device, stop_device)


def _iter_blocks(
    conn: Connection, readout_id: int, index: Sequence[Any], start_device: int, stop_device: int | None
) -> Iterator[tuple[int, npt.NDArray[np.float32]]]:
    """`iter_readout_blocks` over the readout's `_block_index` rows: one statement per block."""
    n_devices = int(index[0].n_devices)
    stop = n_devices if stop_device is None else min(stop_device, n_devices)
    what = f"readout {readout_id}"
    if index[0].g_crc32 is not None:  # one blob
        whole = conn.execute(_WHOLE, {"readout_id": readout_id}, execution_options=BINARY_RESULTS).one()
        yield 0, decode_row(whole, "g", what=what)
        return
    blocks = [(int(r.block_id), int(r.first_device)) for r in index if r.block_id is not None]
    ends = [first for _, first in blocks[1:]] + ([n_devices] if blocks else [])
    reached = 0
    for (block_id, first), end in zip(blocks, ends, strict=True):
        if first != reached:
            raise CorruptVectorError(f"{what}: block at device {first} does not follow {reached}")
        if end <= start_device or first >= stop:
            reached = end
            continue
        row = conn.execute(_BLOCK, {"block_id": block_id}, execution_options=BINARY_RESULTS).one()
        g_us = decode_row(row, "g", what=f"block at device {first} of {what}")
        reached = first + g_us.size
        yield first, g_us
    if reached != n_devices:
        raise CorruptVectorError(f"{what}: its blocks hold {reached} devices, the readout {n_devices}")


def iter_readout_ranges(
    conn: Connection, readout_id: int, range_devices: int
) -> Iterator[npt.NDArray[np.float32]]:
    """The readout in consecutive ranges of `range_devices` devices (the last one shorter),
    whatever its stored blocks: for readers that walk several readouts in step."""
    if range_devices < 1:
        raise StoreError(f"a device range holds at least one device, got {range_devices}")
    return _rechunk((g for _, g in iter_readout_blocks(conn, readout_id)), range_devices)


def _rechunk(blocks: Iterable[npt.NDArray[np.float32]], size: int) -> Iterator[npt.NDArray[np.float32]]:
    pending: list[npt.NDArray[np.float32]] = []
    held = 0
    for block in blocks:
        pending.append(block)
        held += block.size
        while held >= size:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield joined[:size]
            rest = joined[size:]
            pending, held = ([rest] if rest.size else []), rest.size
    if held:
        yield np.concatenate(pending)


def readout_sample_us(conn: Connection, readout_id: int, max_devices: int) -> npt.NDArray[np.float32]:
    """Up to `max_devices` conductances of a readout, for histograms: all of them when the
    readout is that small, else whole stored blocks evenly spread over the chip (reading
    only those blocks; a readout stored whole is strided)."""
    index = _block_index(conn, readout_id)
    n_devices = int(index[0].n_devices)
    if n_devices <= max_devices:
        return _load_g_us(conn, readout_id, index)
    firsts = [int(r.first_device) for r in index if r.block_id is not None]
    if not firsts:  # stored whole before 0008
        return _load_g_us(conn, readout_id, index)[:: -(-n_devices // max_devices)].copy()
    block_devices = firsts[1] if len(firsts) > 1 else n_devices
    n_taken = max(1, min(len(firsts), max_devices // max(block_devices, 1)))
    picks = [firsts[int(k)] for k in np.unique(np.linspace(0, len(firsts) - 1, n_taken).round())]
    parts = [next(_iter_blocks(conn, readout_id, index, first, first + 1))[1] for first in picks]
    return np.concatenate(parts)[:max_devices]


def load_readout(conn: Connection, readout_id: int) -> Readout:
    """The readout with its conductances whole (memory: the vector plus one block),
    every block's length and checksum verified: one statement for the row and its block
    index, one per block."""
    index = _block_index(conn, readout_id)
    info = _info(index[0])
    return Readout(
        id=info.id,
        run_id=info.run_id,
        offset_s=info.offset_s,
        scheduled_s=info.scheduled_s,
        board_time_s=info.board_time_s,
        read_at=info.read_at,
        temperature_c=info.temperature_c,
        g_us=_load_g_us(conn, readout_id, index),
        draw=info.draw,
    )


def _load_g_us(conn: Connection, readout_id: int, index: Sequence[Any]) -> npt.NDArray[np.float32]:
    g_us = np.empty(int(index[0].n_devices), np.float32)
    for first, block in _iter_blocks(conn, readout_id, index, 0, None):
        g_us[first : first + block.size] = block
    return g_us


# One device's series in one statement over every readout of a run, built once (compiled
# once by SQLAlchemy's cache): the run's row, left-joined with its readouts and, for each,
# the block that holds the device — the readout's last block starting at or before it,
# found in the (readout_id, first_device) index alone. The block's length is not compared
# in SQL: SQLite keeps the columns after a blob behind its overflow pages, so reading g_len
# of every candidate block would read the blocks themselves; a block too short to hold the
# device shows as a short read instead. A run without readouts gives one row of NULLs.
_DEVICE = bindparam("device", type_=Integer)
_earlier = readout_blocks.alias("earlier")
_holding = and_(
    readout_blocks.c.readout_id == readouts.c.id,
    readout_blocks.c.first_device
    == select(func.max(_earlier.c.first_device))
    .where(_earlier.c.readout_id == readouts.c.id, _earlier.c.first_device <= _DEVICE)
    .scalar_subquery(),
)
_SERIES_COLUMNS = (
    programming_runs.c.programmed_s_len, readouts.c.id, readouts.c.board_time_s, readouts.c.block_starts,
    readouts.c.g_len, readouts.c.g_crc32, readout_blocks.c.id.label("block_id"),
    readout_blocks.c.first_device,
)  # fmt: skip
_SERIES_FROM = programming_runs.outerjoin(readouts, readouts.c.run_id == programming_runs.c.id).outerjoin(
    readout_blocks, _holding
)
# SQLite: the bytes are read with incremental blob I/O (its `substr` would load every block).
_SERIES_SQLITE = (
    select(*_SERIES_COLUMNS)
    .select_from(_SERIES_FROM)
    .where(programming_runs.c.id == bindparam("run_id"))
    .order_by(readouts.c.board_time_s)
)
# PostgreSQL: `substr` of uncompressed out-of-line bytea slices it without fetching it whole.
_SERIES_POSTGRESQL = _SERIES_SQLITE.add_columns(
    func.coalesce(
        func.substr(readouts.c.g_blob, _DEVICE * G_BYTES + 1, G_BYTES),
        func.substr(
            readout_blocks.c.g_blob, (_DEVICE - readout_blocks.c.first_device) * G_BYTES + 1, G_BYTES
        ),
    ).label("g"),
    func.substr(programming_runs.c.programmed_s_blob, _DEVICE * T_BYTES + 1, T_BYTES).label("t0"),
)


def device_series(conn: Connection, run_id: int, device: int) -> DeviceSeries:
    """One device's conductance over every readout of a run, in time order.

    Reads 4 bytes per readout (and 8 of the programming times) by byte offset in the block
    that holds the device, never whole vectors, in one statement (`_SERIES_SQLITE`,
    `_SERIES_POSTGRESQL`). Checksums cover whole blocks, so only lengths are checked here.
    """
    if device < 0:
        raise StoreError(f"device index must be ≥ 0, got {device}")
    sqlite = is_sqlite(conn)
    query = _SERIES_SQLITE if sqlite else _SERIES_POSTGRESQL
    rows = conn.execute(query, {"run_id": run_id, "device": device}).all()
    if not rows:
        raise NotFoundError(f"programming run {run_id} does not exist")
    n_programmed = rows[0].programmed_s_len
    if n_programmed is None:
        raise StoreError(f"programming run {run_id} has not finished: no per-device programming times")
    rows = [r for r in rows if r.id is not None]  # a run without readouts: one row of NULLs
    _check_device(device, run_id, rows, n_programmed)
    if not sqlite:
        return _series(device, rows, [r.g for r in rows], rows[0].t0 if rows else b"")
    raw = conn.connection.driver_connection  # sqlite3.Connection: blob I/O is not in SQLAlchemy

    def read(table: str, column: str, rowid: int, offset: int, width: int) -> bytes:
        with raw.blobopen(table, column, rowid, readonly=True) as blob:  # type: ignore[union-attr]
            if offset + width > len(blob):
                return b""  # a short read: `_series` reports it
            blob.seek(offset)
            return bytes(blob.read(width))

    g = [
        read("readouts", "g_blob", r.id, device * G_BYTES, G_BYTES)
        if r.g_crc32 is not None  # stored whole
        else read("readout_blocks", "g_blob", r.block_id, (device - r.first_device) * G_BYTES, G_BYTES)
        for r in rows
    ]
    t0 = read("programming_runs", "programmed_s_blob", run_id, device * T_BYTES, T_BYTES) if rows else b""
    return _series(device, rows, g, t0)


def _check_device(device: int, run_id: int, rows: Sequence[Any], n_programmed: int) -> None:
    n_devices = min([n_programmed, *(r.g_len for r in rows)])
    if device >= n_devices:
        raise StoreError(f"device {device} outside run {run_id}'s {n_devices} devices")
    for r in rows:
        if r.g_crc32 is None and r.block_id is None:
            raise CorruptVectorError(f"readout {r.id}: no stored block holds device {device}")


def block_starts_of(row: Any) -> list[tuple[int, float]]:
    """(first device, board s) of each block of a readout row; rows stored before the
    blocks were recorded count as one block read at `board_time_s`."""
    return [(int(first), float(t_s)) for first, t_s in (row.block_starts or [[0, row.board_time_s]])]


def _read_time_s(row: Any, device: int) -> float:
    """When `device` was read in this readout: the start of the block that holds it."""
    return _read_time_in(block_starts_of(row), device)


def _read_time_in(starts: list[tuple[int, float]], device: int) -> float:
    holding = [t_s for first, t_s in starts if first <= device]
    return holding[-1] if holding else starts[0][1]


def _series(device: int, rows: Sequence[Any], g_bytes: list[bytes], t0_bytes: bytes) -> DeviceSeries:
    """The series from each readout's 4 bytes of the device, aged from the block that holds it."""
    if not g_bytes:
        return DeviceSeries(device, np.empty(0), np.empty(0, np.float32))
    for row, g in zip(rows, g_bytes, strict=True):
        if len(g) != G_BYTES:
            raise CorruptVectorError(f"readout {row.id}: no stored block holds device {device}")
    g_us = np.frombuffer(b"".join(g_bytes), "<f4").astype(np.float32)
    t0_s = float(np.frombuffer(t0_bytes, "<f8")[0])
    board_time_s = [_read_time_s(r, device) for r in rows]
    return DeviceSeries(device, np.asarray(board_time_s, np.float64) - t0_s, g_us)


def device_read_times_s(conn: Connection, readout_id: int) -> npt.NDArray[np.float64]:
    """When each device of a readout was read (board s): its block's start time.

    A whole-chip readout spans seconds of wall time, hours of board time on an accelerated
    clock; readouts stored before the blocks were recorded count from their first block.
    """
    starts, n_devices = read_block_starts(conn, readout_id)
    return read_times_in_range(starts, 0, n_devices)


def read_block_starts(conn: Connection, readout_id: int) -> tuple[list[tuple[int, float]], int]:
    """(first device, board s) of each read block of a readout, and its device count."""
    row = conn.execute(
        select(readouts.c.board_time_s, readouts.c.block_starts, readouts.c.g_len).where(
            readouts.c.id == readout_id
        )
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"readout {readout_id} does not exist")
    return block_starts_of(row), int(row.g_len)


def read_times_in_range(starts: list[tuple[int, float]], start: int, stop: int) -> npt.NDArray[np.float64]:
    """The read time (board s) of devices `start`…`stop` − 1, from their blocks' starts
    (devices before the first block count from it): each block's time repeated over the
    devices of the range it holds."""
    firsts = np.array([first for first, _ in starts], np.int64)
    begins = np.clip(np.concatenate([[start], firsts[1:]]), start, stop)
    ends = np.clip(np.concatenate([firsts[1:], [stop]]), start, stop)
    return np.repeat(np.array([t_s for _, t_s in starts], np.float64), np.maximum(ends - begins, 0))


def list_readouts(conn: Connection, run_id: int) -> list[ReadoutInfo]:
    """A run's readouts in schedule order (each offset's draws in turn), without their vectors."""
    query = select(*READOUT_INFO_COLUMNS).where(readouts.c.run_id == run_id)
    ordered = query.order_by(readouts.c.offset_s, readouts.c.draw)
    return [ReadoutInfo(**row._asdict()) for row in conn.execute(ordered)]


def run_readouts(conn: Connection, run_id: int, draw: int | None = None) -> list[tuple[int, float]]:
    """(readout id, offset s) of a run's readouts in schedule order: every draw, or one."""
    return [(r.id, r.offset_s) for r in list_readouts(conn, run_id) if draw is None or r.draw == draw]


def first_offset_readouts(conn: Connection, run_id: int) -> list[int]:
    """The ids of the draws stored so far at the run's first offset (its t0), draw order."""
    first = select(func.min(readouts.c.offset_s)).where(readouts.c.run_id == run_id).scalar_subquery()
    query = select(readouts.c.id).where(readouts.c.run_id == run_id, readouts.c.offset_s == first)
    return [int(i) for i in conn.execute(query.order_by(readouts.c.draw)).scalars()]


def t0_mean_us(
    conn: Connection, run_id: int, loaded: Readout | None = None
) -> tuple[npt.NDArray[np.float32], list[int]]:
    """The mean conductance over the read draws stored so far at the run's first offset (its
    t0: n reads of one programmed state divide the read noise's variance by n), and their
    ids; `loaded`: one of them already in memory, not read again. Memory: two vectors."""
    ids = first_offset_readouts(conn, run_id)
    if not ids:
        raise NotFoundError(f"programming run {run_id} has no readout")
    if loaded is not None and ids == [loaded.id]:
        return loaded.g_us, ids
    total_us: npt.NDArray[np.float32] | None = None
    for readout_id in ids:
        g_us = (
            loaded.g_us
            if loaded is not None and loaded.id == readout_id
            else load_readout(conn, readout_id).g_us
        )
        total_us = g_us.copy() if total_us is None else np.add(total_us, g_us, out=total_us)
    assert total_us is not None
    return total_us / np.float32(len(ids)), ids
