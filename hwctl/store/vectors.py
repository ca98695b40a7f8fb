"""Per-device vectors as raw little-endian blobs with their length, dtype and checksum.

A chip readout is ~10⁶ conductances; one row per device would make a readout a
million-row insert. Instead a vector is stored as one blob in a fixed-width
little-endian dtype, so device `i` of any readout sits at byte `i·itemsize` and one
device's history is a substring query. The CRC-32 is checked on every full read.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import BigInteger, Column, Connection, Integer, LargeBinary, String, Table, func
from sqlalchemy.sql.dml import ReturningInsert, ReturningUpdate

from hwctl.store.engine import is_sqlite, let_go_after
from hwctl.store.errors import CorruptVectorError

# The dtypes a stored vector may have, by their stored name (always little-endian).
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int32": np.dtype("<i4"),
    "uint16": np.dtype("<u2"),
    "uint8": np.dtype("u1"),
    "int8": np.dtype("i1"),
}


@dataclass(frozen=True)
class EncodedVector:
    """A vector ready to bind: the four column values of one vector column group."""

    blob: bytes
    length: int
    dtype: str
    crc32: int

    def columns(self, name: str) -> dict[str, object]:
        """The values keyed by the column names `vector_columns(name)` creates."""
        return {
            f"{name}_blob": self.blob,
            f"{name}_len": self.length,
            f"{name}_dtype": self.dtype,
            f"{name}_crc32": self.crc32,
        }


def vector_columns(name: str, *, nullable: bool = False, chunkable: bool = False) -> list[Column]:
    """The column group that stores one vector: blob, element count, dtype name, CRC-32.

    `chunkable`: blob and checksum may be NULL where the vector is stored in blocks
    elsewhere (each block with its own checksum); length and dtype are always there.
    """
    return [
        Column(f"{name}_blob", LargeBinary, nullable=nullable or chunkable),
        Column(f"{name}_len", Integer, nullable=nullable),
        Column(f"{name}_dtype", String(8), nullable=nullable),
        Column(f"{name}_crc32", BigInteger, nullable=nullable or chunkable),
    ]


def dtype_named(name: str) -> np.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise CorruptVectorError(f"unknown stored vector dtype {name!r}; known: {sorted(DTYPES)}") from None


# An encoded vector is bound when the statement executes (`conn.execute(stmt, values)`),
# never built into it (`stmt.values(...)`): SQLAlchemy's compiled-statement cache keeps the
# statement it first compiled with the values it carried, so a 650 MB programming run or a
# 200 MB fit stayed alive in the worker for good (and an 87 MB checkpoint in the API).


def encode(values: npt.ArrayLike, dtype: str = "float32") -> EncodedVector:
    """Flatten `values` into a little-endian blob of `dtype` with its checksum."""
    array = np.ascontiguousarray(np.asarray(values).ravel(), dtype=dtype_named(dtype))
    blob = array.tobytes()
    return EncodedVector(blob=blob, length=int(array.size), dtype=dtype, crc32=zlib.crc32(blob))


# Bytes converted, checksummed and written at a time by `store_row`.
WRITE_CHUNK_BYTES = 4 << 20


class StreamedBlob:
    """A blob column's value written from memory the caller holds anyway (a buffer, or a
    vector converted chunk by chunk), never joined into one more `bytes`."""

    def __init__(self, data: Any) -> None:
        self.view = memoryview(data).cast("B")

    @property
    def nbytes(self) -> int:
        return self.view.nbytes

    def chunks(self) -> Iterator[Any]:
        for start in range(0, self.nbytes, WRITE_CHUNK_BYTES):
            yield self.view[start : start + WRITE_CHUNK_BYTES]

    def bindable(self) -> Any:
        """The value to bind as a parameter: the caller's buffer itself, not a copy."""
        return self.view


class StreamedVector(StreamedBlob):
    """A per-device vector stored as `encode` would store it (same bytes, length, dtype and
    CRC-32), converted to its little-endian dtype a chunk at a time."""

    def __init__(self, values: npt.ArrayLike, dtype: str = "float32") -> None:
        self.values = np.asarray(values).ravel()
        self.dtype, self.kind = dtype, dtype_named(dtype)
        self.length = int(self.values.size)
        crc = 0
        for chunk in self.chunks():
            crc = zlib.crc32(chunk, crc)
        self.crc32 = crc

    @property
    def nbytes(self) -> int:
        return self.length * self.kind.itemsize

    def chunks(self) -> Iterator[Any]:
        step = max(WRITE_CHUNK_BYTES // self.kind.itemsize, 1)
        for start in range(0, self.length, step):
            chunk: Any = np.ascontiguousarray(self.values[start : start + step], dtype=self.kind)
            yield memoryview(chunk).cast("B")

    def bindable(self) -> Any:
        """The little-endian values to bind: a view of the array where it has that dtype
        already, else a converted copy."""
        array: Any = np.ascontiguousarray(self.values, dtype=self.kind)
        return memoryview(array).cast("B")

    def columns(self, name: str) -> dict[str, object]:
        """The column group's values but the blob (`store_row` writes it)."""
        return {f"{name}_len": self.length, f"{name}_dtype": self.dtype, f"{name}_crc32": self.crc32}


def store_row(
    conn: Connection,
    statement: ReturningInsert[Any] | ReturningUpdate[Any],
    table: Table,
    values: Mapping[str, Any],
    blobs: Mapping[str, StreamedBlob],
) -> int | None:
    """Execute `statement` (an INSERT, or an UPDATE of one row, RETURNING the row's id) with
    `values` and the blob columns `blobs` (a `StreamedVector` under its group's name: its
    `<name>_blob` and the group's other columns); returns the row's id (None: the UPDATE
    matched no row).

    Every value is bound when the statement executes, never built into it: SQLAlchemy's
    compiled-statement cache keeps the first statement it compiled with the values it
    carried (a 650 MB programming run stayed alive in the worker for good). On SQLite
    the row gets `zeroblob`s, which incremental blob I/O then fills chunk by chunk from
    the caller's arrays: no `bytes` of the values and no bound copy (SQLite still expands
    a zeroblob that is not the record's last field while it builds the record, so the
    peak is the arrays and twice the row's blobs, not three times; nothing is left after
    the write). PostgreSQL binds each blob as bytes."""
    sqlite = is_sqlite(conn)
    params: dict[str, Any] = dict(values)
    sizes: dict[str, Any] = {}
    columns: dict[str, StreamedBlob] = {}
    for name, blob in blobs.items():
        column = name
        if isinstance(blob, StreamedVector):
            params.update(blob.columns(name))
            column = f"{name}_blob"
        columns[column] = blob
        if sqlite:
            sizes[column] = func.zeroblob(blob.nbytes)
        else:
            params[column] = blob.bindable()
    row_id = conn.execute(statement.values(**sizes) if sizes else statement, params).scalar_one_or_none()
    let_go_after(conn, sum(blob.nbytes for blob in blobs.values()))
    if row_id is None:
        return None
    if sqlite:
        raw = conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        for column, blob in columns.items():
            if blob.nbytes:
                with raw.blobopen(table.name, column, int(row_id)) as handle:
                    for chunk in blob.chunks():
                        handle.write(chunk)
    return int(row_id)


def decode(blob: bytes, length: int, dtype: str, crc32: int, *, what: str = "vector") -> np.ndarray:
    """The stored vector, after checking its length and CRC-32 (`what` names it in errors)."""
    kind = dtype_named(dtype)
    if len(blob) != length * kind.itemsize:
        raise CorruptVectorError(
            f"{what}: blob holds {len(blob)} bytes, expected {length} × {kind.itemsize} ({dtype})"
        )
    actual = zlib.crc32(blob)
    if actual != crc32:
        raise CorruptVectorError(f"{what}: checksum mismatch (stored {crc32:#010x}, computed {actual:#010x})")
    return np.frombuffer(blob, dtype=kind).astype(kind.newbyteorder("="), copy=False)


def decode_row(row: object, name: str, *, what: str) -> np.ndarray:
    """Decode the column group `name` of a result row (attribute access)."""
    return decode(
        getattr(row, f"{name}_blob"),
        getattr(row, f"{name}_len"),
        getattr(row, f"{name}_dtype"),
        getattr(row, f"{name}_crc32"),
        what=what,
    )
