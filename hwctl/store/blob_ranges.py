"""One stored blob read in byte ranges, never whole: a file-like view of a blob column.

A whole-chip vector stored as one blob (a device map, a drift fit's ν) is 174 MB at
43.6 M devices, and fetching it whole costs the driver's copy on top of Python's. Readers
that need a part of it (the device map's placement, ν of one layer) read ranges instead:
SQLite through incremental blob I/O on the row (`sqlite3.Blob`: its overflow pages walked
once per open handle, never the value assembled), PostgreSQL with `substring` (the
server fetches the TOAST chunks of the range). Ranges are not checksummed: the vector's
CRC-32 covers the whole blob and whole reads (`hwctl.store.vectors.decode`) check it.
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from sqlalchemy import Connection, Table, func, select

from hwctl.store.engine import BINARY_RESULTS, is_sqlite
from hwctl.store.errors import NotFoundError

# Bytes fetched per read when the reader asks for less (a zip directory, an .npy header).
READ_AHEAD_BYTES = 1 << 16


class _PostgresBlob(io.RawIOBase):
    """A bytea value read with `substring`, one statement per read."""

    def __init__(self, conn: Connection, table: Table, column: str, row_id: int) -> None:
        self.conn, self.table, self.column, self.row_id = conn, table, column, row_id
        self.size = int(_scalar(conn, select(func.octet_length(table.c[column])), table, row_id))
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(base + offset, 0)
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self.size - self.position)
        if n <= 0:
            return 0
        part = func.substring(self.table.c[self.column], self.position + 1, n)
        data = bytes(_scalar(self.conn, select(part), self.table, self.row_id, BINARY_RESULTS))
        view[: len(data)] = data
        self.position += len(data)
        return len(data)


class _SqliteBlob(io.RawIOBase):
    """A blob read through SQLite's incremental blob I/O."""

    def __init__(self, handle: sqlite3.Blob) -> None:
        self.handle = handle
        self.size = len(handle)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.handle.tell(), io.SEEK_END: self.size}[whence]
        self.handle.seek(min(max(base + offset, 0), self.size))
        return self.handle.tell()

    def tell(self) -> int:
        return self.handle.tell()

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.handle.read(len(view))
        view[: len(data)] = data
        return len(data)


@contextmanager
def open_blob(
    conn: Connection, table: Table, column: str, row_id: int, buffer_bytes: int = READ_AHEAD_BYTES
) -> Iterator[BinaryIO]:
    """Row `row_id`'s blob in `column` as a seekable binary file, read `buffer_bytes` at a time
    at least (`NotFoundError`: no such row or a NULL value). Inside the caller's
    transaction; closed on exit. On PostgreSQL every read decompresses a compressed value
    from its start: read front to back, in large buffers."""
    if is_sqlite(conn):
        raw_conn = conn.connection.driver_connection
        assert isinstance(raw_conn, sqlite3.Connection)
        _scalar(conn, select(table.c.id), table, row_id)  # a clear NotFoundError before blobopen's
        try:
            handle = raw_conn.blobopen(table.name, column, row_id, readonly=True)
        except sqlite3.OperationalError as exc:  # a NULL or non-blob value
            raise NotFoundError(f"{table.name} {row_id} has no {column}: {exc}") from None
        raw: io.RawIOBase = _SqliteBlob(handle)
    else:
        raw = _PostgresBlob(conn, table, column, row_id)
    reader = io.BufferedReader(raw, buffer_bytes)
    try:
        yield reader
    finally:
        reader.close()
        if isinstance(raw, _SqliteBlob):
            raw.handle.close()


def _scalar(
    conn: Connection, query: Any, table: Table, row_id: int, options: dict[str, Any] | None = None
) -> Any:
    value = conn.execute(query.where(table.c.id == row_id), execution_options=options or {}).scalar()
    if value is None:
        raise NotFoundError(f"{table.name} {row_id} does not exist or has no value there")
    return value
