"""Group commit: waiting submissions share one transaction, and each fails alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, insert, select

from api.group_commit import GroupCommit
from hwctl.store.engine import make_engine
from hwctl.store.schema import stations


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def add_station(name: str) -> object:
    def work(conn: Connection) -> object:
        conn.execute(insert(stations).values(
            name=name, resource="sim://", chip_serial="SIM-0001", tiles=1, rows=8, cols=8,
            amplitude_limit_ua=400.0, clock_kind="virtual",
        ))  # fmt: skip
        if name.startswith("bad"):
            raise ValueError(f"{name} refused after its insert")
        return conn.get_transaction()

    return work


def station_names(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(stations.c.name).order_by(stations.c.name)).scalars())


def wait_until_taken(group: GroupCommit) -> None:
    """Until the writer holds the first submission (and waits for the lock the test holds)."""
    deadline = time.monotonic() + 10
    while group._pending.qsize() and time.monotonic() < deadline:
        time.sleep(0.001)


def test_submissions_waiting_together_commit_in_one_transaction_and_fail_alone(engine: Engine) -> None:
    lock = threading.RLock()
    group = GroupCommit(engine, lock)
    with lock:  # the writer takes the first submission, then waits here while the rest queue
        first = group.submit(add_station("a-first"))
        wait_until_taken(group)
        waiting = [group.submit(add_station(name)) for name in ("b-ok", "bad-one", "c-ok")]
    ok_b, bad, ok_c = waiting
    with pytest.raises(ValueError, match="bad-one refused"):
        bad.result(timeout=10)
    assert ok_b.result(timeout=10) is ok_c.result(timeout=10)  # one shared transaction
    assert first.result(timeout=10) is not ok_b.result()
    assert station_names(engine) == ["a-first", "b-ok", "c-ok"]  # the failed one left nothing
    group.stop()


def test_a_submission_cancelled_while_waiting_is_not_stored_and_the_writer_goes_on(engine: Engine) -> None:
    lock = threading.RLock()
    group = GroupCommit(engine, lock)
    with lock:
        first = group.submit(add_station("first"))
        wait_until_taken(group)
        abandoned = group.submit(add_station("abandoned"))
        assert abandoned.cancel()  # what asyncio does to the future when the client goes away
        last = group.submit(add_station("last"))
    first.result(timeout=10)
    last.result(timeout=10)
    assert station_names(engine) == ["first", "last"]
    group.stop()


def test_stop_finishes_what_was_submitted(engine: Engine) -> None:
    group = GroupCommit(engine, threading.RLock())
    futures = [group.submit(add_station(f"s{i:02d}")) for i in range(20)]
    group.stop()
    assert all(f.done() and f.exception() is None for f in futures)
    assert len(station_names(engine)) == 20
