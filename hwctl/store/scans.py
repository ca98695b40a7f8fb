"""A connection set up to read a whole run once, without keeping what it read resident.

SQLite connections map the database file (`engine.SQLITE_MMAP_BYTES`): reading one device
of a readout then follows its overflow pages without copying them. A scan of every
readout of a 43.6 M-device run (3.5 GB) through that map leaves each page it touched in
the process's resident set (file-backed, but counted as its memory) for as long as the
pooled connection lives. A scan reads through SQLite's small page cache instead, and the
connection's map is dropped (unmapped) for the scan and restored after.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection

from hwctl.store.engine import SQLITE_MMAP_BYTES, is_sqlite


@contextmanager
def scanning(conn: Connection) -> Iterator[Connection]:
    """`conn`, reading without the file map on SQLite (PostgreSQL: as it is)."""
    if not is_sqlite(conn):
        yield conn
        return
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    raw.execute("PRAGMA mmap_size=0")
    try:
        yield conn
    finally:
        raw.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
