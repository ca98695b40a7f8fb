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

A PostgreSQL server restarts (an update, a failover) and every pooled connection dies
with it. Engines for it check a connection before handing it out (`pool_pre_ping`: one
round trip, ~0.1 ms on a local socket), so the first statement after the server is back
runs on a fresh connection instead of failing on a dead one; a connection attempt gives
up after `POSTGRES_CONNECT_TIMEOUT_S` rather than hanging on an unreachable host.

Only these two are supported, so a URL naming anything else is refused here, before any
driver loads. Creating an engine touches nothing on disk: a SQLite file and its
directory are created by `create_sqlite_file`, which only migrating calls, so a check
or a failed start leaves no empty database behind.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from hwctl.store.errors import DatabaseUnavailableError, DatabaseURLError

SQLITE_BEGIN_OPTION = "sqlite_begin"
BINARY_RESULTS_OPTION = "binary_results"
BINARY_RESULTS: dict[str, Any] = {BINARY_RESULTS_OPTION: True}
SQLITE_MMAP_BYTES = 1 << 40
SQLITE_PAGE_BYTES = 32_768  # takes effect only when the file is created
SQLITE_CHECKPOINT_BYTES = 1 << 20
# pysqlite's statement cache keeps each statement with its last parameters bound, and
# SQLite copies a bound blob: a cached INSERT of a 650 MB programming run or an 87 MB
# checkpoint kept that copy alive in every pooled connection until the statement ran
# again. Uncached, a statement is finalized, and its copies freed, when its cursor
# closes; preparing one again costs ~10 µs.
SQLITE_CACHED_STATEMENTS = 0
SUPPORTED_DRIVERS = frozenset({"sqlite", "sqlite+pysqlite", "postgresql+psycopg"})
POSTGRES_CONNECT_TIMEOUT_S = 10


def make_engine(url: str, *, sqlite_busy_timeout_ms: int = 10_000, **kwargs: Any) -> Engine:
    """An engine for `url` (nothing is opened yet); raises `DatabaseURLError` for any other database."""
    parsed = _supported_url(url)
    if parsed.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        connect_args = kwargs.get("connect_args", {})
        kwargs["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S, **connect_args}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {
            "cached_statements": SQLITE_CACHED_STATEMENTS,
            **kwargs.get("connect_args", {}),
        }
    engine = create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        _configure_sqlite(engine, sqlite_busy_timeout_ms)
    else:
        _configure_psycopg(engine)
    return engine


def _supported_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseURLError(url) from None
    if parsed.drivername not in SUPPORTED_DRIVERS:
        raise DatabaseURLError(url)
    return parsed


def sqlite_file(engine: Engine) -> Path | None:
    """The file of a file-backed SQLite database; None for PostgreSQL and in-memory SQLite."""
    database = engine.url.database
    if not is_sqlite(engine) or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def station_socket_name(engine: Engine, station_id: int, role: str) -> bytes:
    """The abstract-namespace UNIX socket address of (this database, station `station_id`) on
    this host, for `role`: a host's processes find each other by it, and the kernel frees
    it when the process holding it dies (kill -9 included)."""
    path = sqlite_file(engine)
    where = str(path.resolve()) if path is not None else f"{os.getpid()}:{engine.url}"
    digest = hashlib.sha256(f"{where}\0{station_id}".encode()).hexdigest()[:32]
    return f"\0hwctl-{role}-{digest}".encode()


def create_sqlite_file(engine: Engine) -> None:
    """Create a SQLite database's directory (the file follows on first connect); only migrating should."""
    path = sqlite_file(engine)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


@contextmanager
def connect(engine: Engine, *, begin: bool = False) -> Iterator[Connection]:
    """A connection (in a transaction if `begin`); failing to open one raises `DatabaseUnavailableError`."""
    try:
        connection = engine.connect()
    except DBAPIError as exc:
        raise DatabaseUnavailableError(describe(engine), unavailable_reason(exc)) from None
    with connection:
        if begin:
            with connection.begin():
                yield connection
        else:
            yield connection


def unavailable_reason(exc: DBAPIError) -> str:
    """The driver's one-line reason, without libpq's `connection failed: ... FATAL:` preamble."""
    first_line = str(exc.orig).splitlines()[0] if str(exc.orig) else type(exc.orig).__name__
    return first_line.split("FATAL:", 1)[-1].strip().removeprefix("connection failed: ")


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


# libpq grows a connection's input and output buffers to the largest message they carried
# and never shrinks them: a pooled connection that stored a 740 MB programming run (or read
# one) kept ~1 GB for good (the worker held 1.3 GB between jobs, 2.0 GB after the fit, at
# 43.6 M devices). A connection that carried a message this large is closed when it is
# let go instead of going back to the pool (`let_go_after`); opening another costs ~5 ms.
LARGE_MESSAGE_BYTES = 16 << 20


def let_go_after(conn: Connection, nbytes: int) -> None:
    """On PostgreSQL, after `nbytes` went over `conn` in one statement or row: once `conn`
    is closed, its connection is closed too, not pooled with buffers that size."""
    if nbytes >= LARGE_MESSAGE_BYTES and not is_sqlite(conn) and not conn.invalidated:
        conn.detach()


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


def describe(engine: Engine) -> str:
    """The database location for messages, without a password."""
    return engine.url.render_as_string(hide_password=True)
