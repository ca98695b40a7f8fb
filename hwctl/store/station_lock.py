"""One worker per station: the lock a worker holds on its station for as long as it runs.

Two workers started for one station (a second `hwctl worker`, or one beside `hwctl
serve`'s embedded station) would both drive the board: the second's start-up recovery
queues the first's running job again, both claim jobs and move a virtual clock, and
readbacks run twice or are skipped as missed. The lock dies with its holder (kill -9
included), so a worker restarted after a crash never waits for a stale one.

- SQLite (one host): an abstract-namespace UNIX socket named from the database file's
  real path and the station id, bound for as long as the worker runs.
- PostgreSQL: a session advisory lock on a connection of its own, held as long. A
  server restart ends that session and the lock with it; the worker goes on, and a
  second worker started while the server is back before this one stops is not refused.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Iterator

from sqlalchemy import Engine

from hwctl.store.engine import is_sqlite, station_socket_name

log = logging.getLogger(__name__)

# pg_try_advisory_lock(classid, objid): this class of lock is "a station's worker".
_ADVISORY_CLASS = 0x6877_0001


class StationBusyError(RuntimeError):
    """Another worker holds the station."""


@contextlib.contextmanager
def station_held(engine: Engine, station_id: int, station_name: str) -> Iterator[None]:
    """Hold `station_id` for the block; `StationBusyError` if another worker holds it."""
    busy = f"station {station_name!r} already has a worker on this database (one worker drives a board)"
    if is_sqlite(engine):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(station_socket_name(engine, station_id, "worker"))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise StationBusyError(busy) from exc
                # No abstract namespace (not Linux): run unguarded rather than not at all.
                log.warning("station %s: no worker lock (%s); a second worker would not be refused",
                            station_name, exc)  # fmt: skip
            yield
        return
    import psycopg

    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (_ADVISORY_CLASS, station_id)).fetchone()
        if row is None or not row[0]:
            raise StationBusyError(busy)
        yield
    finally:
        with contextlib.suppress(psycopg.Error):  # a dead session has released the lock already
            conn.close()
