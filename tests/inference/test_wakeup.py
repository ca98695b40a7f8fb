"""Workers are woken when a job is queued for their station (hwctl.store.wakeup), on SQLite
and PostgreSQL, in-process and from another process; a rolled-back job wakes nobody."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from hwctl import queue
from hwctl.store.wakeup import Listener
from tests.store.conftest import database_url, engine, station_ids  # noqa: F401  (fixtures)

WOKEN_WITHIN_S = 2.0


@pytest.fixture
def woken(engine: Engine, station_ids: list[int]) -> Iterator[threading.Event]:  # noqa: F811
    """The event a listener on the first station sets."""
    stop, event = threading.Event(), threading.Event()
    listener = Listener(engine, station_ids[0], [event], stop).start()
    assert listener.listening.wait(5.0)
    event.clear()
    yield event
    stop.set()
    listener.join(2.0)
    assert event.is_set()  # a stop wakes the lanes too


def test_a_job_queued_for_the_station_wakes_its_listener(
    engine: Engine, station_ids: list[int], woken: threading.Event  # noqa: F811
) -> None:
    queue.enqueue(engine, kind="evaluate", station_id=station_ids[1], run_at_s=0.0, lane="compute")
    assert not woken.wait(0.3)  # another station's job
    queue.enqueue(engine, kind="evaluate", station_id=station_ids[0], run_at_s=0.0, lane="compute")
    assert woken.wait(WOKEN_WITHIN_S)


def test_a_batch_queued_in_a_transaction_wakes_at_commit_and_a_rollback_wakes_nobody(
    engine: Engine, station_ids: list[int], woken: threading.Event  # noqa: F811
) -> None:
    job: queue.NewJob = {"kind": "readback", "station_id": station_ids[0], "run_at_s": 10.0}
    with pytest.raises(RuntimeError), queue.writing(engine) as conn:
        queue.enqueue_many_in(conn, [job, job])
        raise RuntimeError("the caller gives up")
    assert not woken.wait(0.3)
    with queue.writing(engine) as conn:
        queue.enqueue_many_in(conn, [job, job])
    assert woken.wait(WOKEN_WITHIN_S)


def test_a_transaction_whose_connection_the_database_dropped_ends_with_the_callers_error(
    engine: Engine, station_ids: list[int], woken: threading.Event  # noqa: F811
) -> None:
    """A restarting server invalidates the connection under an open transaction: leaving it
    rolls back, and the wake-up bookkeeping must not replace the outage's own error (which
    callers read as "database unavailable") with SQLAlchemy's PendingRollbackError."""
    job: queue.NewJob = {"kind": "readback", "station_id": station_ids[0], "run_at_s": 10.0}
    with pytest.raises(RuntimeError, match="the server went away"), queue.writing(engine) as conn:
        queue.enqueue_many_in(conn, [job])
        conn.invalidate()  # what SQLAlchemy does on a disconnect error
        raise RuntimeError("the server went away")
    assert not woken.wait(0.3)
    queue.enqueue(engine, kind="evaluate", station_id=station_ids[0], run_at_s=0.0, lane="compute")
    assert woken.wait(WOKEN_WITHIN_S)


def test_a_job_queued_by_another_process_wakes_the_listener(
    database_url: str, station_ids: list[int], woken: threading.Event  # noqa: F811
) -> None:
    script = (
        "import sys; from hwctl import queue; from hwctl.store.engine import make_engine; "
        "queue.enqueue(make_engine(sys.argv[1]), kind='evaluate', station_id=int(sys.argv[2]), "
        "run_at_s=0.0, lane='compute')"
    )
    subprocess.run([sys.executable, "-c", script, database_url, str(station_ids[0])], check=True, timeout=60)
    assert woken.wait(WOKEN_WITHIN_S)
