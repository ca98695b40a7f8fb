"""Engines for the two supported databases, configured the same way everywhere.

SQLite is the embedded default: WAL so readers never block the writer, a busy timeout
so concurrent workers wait instead of failing, foreign keys on (off by default in
SQLite). Its transactions are begun by us, so a connection can ask for
`BEGIN IMMEDIATE` (take the write lock up front) with the `sqlite_begin` option.

Readout blobs (~3.7 MB) decide the page layout: with 32 KiB pages a blob is a chain of
~110 overflow pages instead of ~900, so seeking to one device's bytes is 8× shorter, and
a 1 MiB auto-checkpoint threshold makes every readout commit copy its pages from the WAL
into the memory-mapped file (a reader then walks the chain by pointer, not by `pread`).
Measured (benchmarks/RESULTS.md, store): one device's series over 20 readouts straight
after ingest 0.4 ms (2.1 ms with 4 KiB pages, ~10 ms under load); the checkpoint costs a
readout commit ~15 ms under load.

psycopg returns results as text by default, so a 3.7 MB bytea arrives as 7.4 MB of hex
to decode. Statements that fetch whole vectors carry the `binary_results` execution
option (`BINARY_RESULTS`), which asks PostgreSQL for the binary format instead; other
statements keep the default, which every type (and Alembic's reflection) understands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

SQLITE_BEGIN_OPTION = "sqlite_begin"
BINARY_RESULTS_OPTION = "binary_results"
BINARY_RESULTS: dict[str, Any] = {BINARY_RESULTS_OPTION: True}
SQLITE_MMAP_BYTES = 1 << 40
SQLITE_PAGE_BYTES = 32_768  # takes effect only when the file is created
SQLITE_CHECKPOINT_BYTES = 1 << 20


def make_engine(url: str, *, sqlite_busy_timeout_ms: int = 10_000, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite files get their directory created and their pragmas set."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, **kwargs)
        if engine.dialect.driver == "psycopg":
            _configure_psycopg(engine)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)
    _configure_sqlite(engine, sqlite_busy_timeout_ms)
    return engine


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's `begin` event below (pysqlite's own
        # implicit BEGIN cannot be made IMMEDIATE and defers DDL).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_BYTES}")  # before WAL: the file may be new
        cursor.execute("PRAGMA journal_mode=WAL")
        page_bytes = cursor.execute("PRAGMA page_size").fetchone()[0]  # older files keep theirs
        cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_BYTES // page_bytes}")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Map the file so reading a few bytes of a large blob (one device of a readout)
        # follows its overflow-page chain without copying pages (SQLite caps the size).
        cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def _configure_psycopg(engine: Engine) -> None:
    @event.listens_for(engine, "do_execute")
    def _on_execute(cursor: Any, statement: str, parameters: Any, context: Any) -> bool | None:
        if not context.execution_options.get(BINARY_RESULTS_OPTION):
            return None  # SQLAlchemy executes it as usual
        cursor.execute(statement, parameters, binary=True)
        return True


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


def describe(engine: Engine) -> str:
    """The database location for messages, without a password."""
    return engine.url.render_as_string(hide_password=True)
