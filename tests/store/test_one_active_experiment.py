"""The database itself keeps a station to one active experiment (created, programming or
reading); upgrading a database that already holds several keeps the newest per station and
cancels the others the way the API's cancel does."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from hwctl.store import records
from hwctl.store.migrate import current_revision, downgrade, head_revision, schema_drift, upgrade
from hwctl.store.schema import experiments, jobs
from hwctl.vocabulary import ACTIVE_EXPERIMENT_STATUSES

BEFORE = "0003"


def _experiment(conn: Connection, station_id: int, status: str = "created") -> int:
    network_id = records.add_network(conn, f"net-{status}", architecture="mlp", checkpoint=b"weights")
    experiment_id = records.add_experiment(
        conn, "run", network_id=network_id, station_id=station_id, settings={}
    )
    conn.execute(update(experiments).where(experiments.c.id == experiment_id).values(status=status))
    return experiment_id


def _status(engine: Engine, experiment_id: int) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(select(experiments.c.status).where(experiments.c.id == experiment_id)).scalar_one()
        )


@pytest.mark.parametrize("second", ACTIVE_EXPERIMENT_STATUSES)
def test_a_second_active_experiment_on_a_station_is_refused_by_the_database(
    engine: Engine, station_ids: list[int], second: str
) -> None:
    with engine.begin() as conn:
        _experiment(conn, station_ids[0], "reading")
    with pytest.raises(IntegrityError), engine.begin() as conn:
        _experiment(conn, station_ids[0], second)
    with engine.connect() as conn:
        assert len(conn.execute(select(experiments.c.id)).all()) == 1


def test_a_cancelled_experiment_cannot_be_made_active_again_while_another_holds_the_station(
    engine: Engine, station_ids: list[int]
) -> None:
    with engine.begin() as conn:
        cancelled = _experiment(conn, station_ids[0], "cancelled")
        _experiment(conn, station_ids[0], "created")
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(update(experiments).where(experiments.c.id == cancelled).values(status="programming"))
    assert _status(engine, cancelled) == "cancelled"


def test_finished_experiments_and_other_stations_do_not_block_a_new_one(
    engine: Engine, station_ids: list[int]
) -> None:
    with engine.begin() as conn:
        for status in ("done", "cancelled", "failed", "done"):
            _experiment(conn, station_ids[0], status)
        _experiment(conn, station_ids[1], "reading")
        newest = _experiment(conn, station_ids[0], "created")
    assert _status(engine, newest) == "created"


def test_upgrade_keeps_the_newest_active_experiment_per_station_and_cancels_the_older_ones(
    engine: Engine, station_ids: list[int]
) -> None:
    downgrade(engine, BEFORE)
    with engine.begin() as conn:
        oldest = _experiment(conn, station_ids[0], "reading")
        older = _experiment(conn, station_ids[0], "programming")
        newest = _experiment(conn, station_ids[0], "created")
        alone = _experiment(conn, station_ids[1], "reading")
        finished = _experiment(conn, station_ids[0], "done")
        queued, running = (  # only the columns of revision 0003's jobs table
            conn.execute(
                insert(jobs).values(kind="readback", station_id=station_ids[0], experiment_id=oldest,
                                    run_at_s=t, status="queued").returning(jobs.c.id)
            ).scalar_one()
            for t in (10.0, 20.0)
        )  # fmt: skip
        conn.execute(update(jobs).where(jobs.c.id == running).values(status="running"))
    upgrade(engine)
    assert {e: _status(engine, e) for e in (oldest, older, newest, alone, finished)} == {
        oldest: "cancelled",
        older: "cancelled",
        newest: "created",
        alone: "reading",
        finished: "done",
    }
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(jobs)).all()}
    assert rows[queued].status == "cancelled"
    assert f"station {station_ids[0]} runs newer experiment {newest}" in rows[queued].error
    assert rows[running].status == "running" and rows[running].cancel_requested
    assert schema_drift(engine) == []


def test_downgrade_drops_the_guard_and_upgrade_restores_it(engine: Engine, station_ids: list[int]) -> None:
    downgrade(engine, BEFORE)
    with engine.begin() as conn:
        _experiment(conn, station_ids[0], "reading")
        _experiment(conn, station_ids[0], "reading")  # allowed without the guard
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    with pytest.raises(IntegrityError), engine.begin() as conn:
        _experiment(conn, station_ids[0], "created")
