"""Workers woken when a job is queued for their station, instead of finding it at their next poll.

A job queued by the API would otherwise wait for the worker's next look at the queue
(`poll_s`, 0.5 s by default) — most of a short inference job's time. The enqueueing
transaction says which station got work (`notify_in`); a worker's `Listener` hears it
and sets its lanes' events. The poll stays as the fallback: a lost wake-up costs at
most one poll interval, never a job.

- PostgreSQL: `NOTIFY hwctl_jobs, '<station_id>'` inside the enqueueing transaction, so
  it is delivered at commit and never for a rolled-back job; the listener holds its own
  autocommit connection that `LISTEN`s (re-opened with backoff after an outage).
- SQLite: a datagram to the station's UNIX socket, sent once the transaction has
  committed and its connection is back in the pool (a wake-up sent before the commit
  would find the job not yet visible). The socket lives in Linux's abstract namespace,
  named from the database file's real path and the station id, so the API process, a
  worker process and the embedded worker meet without a file to clean up and without
  the 108-byte path limit; where it cannot be bound the worker polls.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, event, func, select
from sqlalchemy.pool import Pool

from hwctl.store.engine import is_sqlite, station_socket_name

log = logging.getLogger(__name__)

CHANNEL = "hwctl_jobs"
# Longest wait of the listener between looks at the stop request.
LISTEN_SLICE_S = 0.1
# Backoff of the PostgreSQL listener's reconnection during an outage.
RECONNECT_MAX_S = 2.0

# Stations with jobs queued in the connection's open transaction, then committed and
# waiting for the connection's check-in (keys of the pooled connection's `info`).
_PENDING = "hwctl_wakeup_pending"
_COMMITTED = "hwctl_wakeup_committed"


def notify_in(conn: Connection, station_ids: Iterable[int]) -> None:
    """Wake the workers of `station_ids` once the caller's transaction commits."""
    stations = sorted(set(station_ids))
    if not stations:
        return
    if is_sqlite(conn):
        conn.info.setdefault(_PENDING, set()).update(stations)
        return
    for station_id in stations:
        conn.execute(select(func.pg_notify(CHANNEL, str(station_id))))


def _send(engine: Engine, station_ids: Iterable[int]) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for station_id in station_ids:
            with contextlib.suppress(OSError):  # no worker listening, or its buffer full: it polls
                sock.sendto(b"w", station_socket_name(engine, station_id, "wake"))


@event.listens_for(Engine, "commit")
def _committed(conn: Connection) -> None:
    pending = conn.info.pop(_PENDING, None)
    if pending:
        conn.info.setdefault(_COMMITTED, set()).update(pending)


@event.listens_for(Engine, "rollback")
def _rolled_back(conn: Connection) -> None:
    """An invalidated connection (the database went away) took its pending wake-ups with it;
    asking it for them would raise PendingRollbackError in place of the outage's own error."""
    if not conn.invalidated:
        conn.info.pop(_PENDING, None)


@event.listens_for(Engine, "engine_connect")
def _remember_engine(conn: Connection) -> None:
    conn.info["hwctl_wakeup_engine"] = conn.engine


@event.listens_for(Pool, "checkin")
def _checked_in(_dbapi_connection: Any, record: Any) -> None:
    if record is None:
        return
    committed = record.info.pop(_COMMITTED, None)
    engine = record.info.get("hwctl_wakeup_engine")
    if committed and engine is not None:
        _send(engine, sorted(committed))


class Listener:
    """Sets `events` whenever a job is queued for `station_id`, and all of them when
    `stop_event` is set (so a lane waiting on its event also sees a stop)."""

    def __init__(
        self, engine: Engine, station_id: int, events: Sequence[threading.Event], stop_event: threading.Event
    ) -> None:
        self.engine = engine
        self.station_id = station_id
        self.events = tuple(events)
        self.stop_event = stop_event
        self.listening = threading.Event()  # set once notifications can arrive
        self._thread = threading.Thread(target=self._run, name=f"wakeup-{station_id}", daemon=True)

    def start(self) -> Listener:
        self._thread.start()
        return self

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _wake(self) -> None:
        for wake in self.events:
            wake.set()

    def _run(self) -> None:
        try:
            if is_sqlite(self.engine):
                self._run_socket()
            else:
                self._run_postgres()
        finally:
            self._wake()

    def _run_socket(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(station_socket_name(self.engine, self.station_id, "wake"))
            except OSError as exc:
                log.warning("station %s: no wake-up socket (%s); the worker polls", self.station_id, exc)
                self.stop_event.wait()
                return
            sock.settimeout(LISTEN_SLICE_S)
            self.listening.set()
            while not self.stop_event.is_set():
                try:
                    sock.recv(64)
                except TimeoutError:
                    continue
                self._wake()

    def _run_postgres(self) -> None:
        import psycopg

        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        delay_s = 0.05
        while not self.stop_event.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    self._wake()  # a job queued while not listening is found at once
                    delay_s = 0.05
                    while not self.stop_event.is_set():
                        for note in conn.notifies(timeout=LISTEN_SLICE_S):
                            if note.payload == str(self.station_id):
                                self._wake()
            except psycopg.Error as exc:
                self.listening.clear()
                log.warning("station %s: wake-up listener lost the database (%s); retrying in %.2f s",
                            self.station_id, type(exc).__name__, delay_s)  # fmt: skip
                self.stop_event.wait(delay_s)
                delay_s = min(2 * delay_s, RECONNECT_MAX_S)
