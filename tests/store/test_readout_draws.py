"""Read draws (revision 0009): several readouts of one run at one offset, each its own
`draw`; readouts stored before keep their evaluations and blocks through the upgrade
and become draw 0; a downgrade keeps draw 0 of each offset."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from hwctl.mapping import DeviceMap
from hwctl.store import records
from hwctl.store.engine import make_engine
from hwctl.store.migrate import downgrade, schema_drift, upgrade
from hwctl.store.readouts import (
    ProgrammingResult,
    add_readout,
    find_readout,
    first_offset_readouts,
    list_readouts,
    load_readout,
    run_readouts,
)
from hwctl.store.schema import evaluations, readout_blocks, readouts
from tests.store.conftest import GEOMETRY

N_DEVICES = 8


def _readout(conn: sa.Connection, run: int, offset_s: float, draw: int, level_us: float) -> int:
    at_s = 1_000 + offset_s
    return add_readout(conn, run, offset_s=offset_s, scheduled_s=at_s, board_time_s=at_s,
                       g_us=np.full(N_DEVICES, level_us, np.float32), draw=draw)  # fmt: skip


def test_draws_of_one_offset_are_distinct_readouts_listed_in_draw_order(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult]
) -> None:
    run, _ = programmed_run
    with engine.begin() as conn:
        later = _readout(conn, run, 100.0, 0, 5.0)
        t0_second = _readout(conn, run, 25.0, 1, 11.0)
        t0_first = _readout(conn, run, 25.0, 0, 10.0)
    with engine.connect() as conn:
        assert find_readout(conn, run, 25.0) == t0_first
        assert find_readout(conn, run, 25.0, draw=1) == t0_second
        assert find_readout(conn, run, 25.0, draw=2) is None
        assert [(r.offset_s, r.draw) for r in list_readouts(conn, run)] == [(25.0, 0), (25.0, 1), (100.0, 0)]
        assert run_readouts(conn, run) == [(t0_first, 25.0), (t0_second, 25.0), (later, 100.0)]
        assert run_readouts(conn, run, draw=1) == [(t0_second, 25.0)]
        assert first_offset_readouts(conn, run) == [t0_first, t0_second]
        assert load_readout(conn, t0_second).draw == 1
    with engine.begin() as conn, pytest.raises(IntegrityError):
        _readout(conn, run, 25.0, 1, 12.0)  # the same draw twice


def test_readouts_stored_before_0009_become_draw_0_and_keep_their_evaluations_and_blocks(
    database_url: str, device_map: DeviceMap
) -> None:
    engine = make_engine(database_url)
    upgrade(engine, "0008")
    old_readouts = sa.table(
        "readouts", *(sa.column(c) for c in ("run_id", "offset_s", "scheduled_s", "board_time_s",
                                              "read_at", "g_len", "g_dtype")),
    )  # fmt: skip
    with engine.begin() as conn:
        station = records.add_station(conn, "old", resource="sim://", chip_serial="SIM", geometry=GEOMETRY,
                                      amplitude_limit_ua=500.0)  # fmt: skip
        network = records.add_network(conn, "old", architecture="mlp", checkpoint=b"old")
        mapping = records.add_mapping(conn, network_id=network, station_id=station, device_map=b"-",
                                      n_devices=N_DEVICES, utilisation=0.1)  # fmt: skip
        run = conn.execute(
            sa.text("INSERT INTO programming_runs (mapping_id, settings, started_at) "
                    "VALUES (:m, '{}', CURRENT_TIMESTAMP) RETURNING id"), {"m": mapping},
        ).scalar_one()  # fmt: skip
        old_ids = []
        for offset_s in (25.0, 100.0):
            readout_id = conn.execute(old_readouts.insert().values(
                run_id=run, offset_s=offset_s, scheduled_s=offset_s, board_time_s=offset_s,
                read_at=sa.func.now(), g_len=0, g_dtype="float32",
            ).returning(sa.column("id"))).scalar_one()  # fmt: skip
            old_ids.append(readout_id)
            records.add_evaluation(conn, readout_id, method="none", accuracy=90.0, n_images=10, ci=(80, 95),
                                   settings={})  # fmt: skip
    upgrade(engine)
    assert schema_drift(engine) == []
    with engine.begin() as conn:
        assert [(r.offset_s, r.draw) for r in list_readouts(conn, run)] == [(25.0, 0), (100.0, 0)]
        assert conn.execute(select(func.count()).select_from(evaluations)).scalar_one() == 2
        second = _readout(conn, run, 25.0, 1, 3.0)
        records.add_evaluation(
            conn, second, method="none", accuracy=91.0, n_images=10, ci=(80, 95), settings={}
        )

    downgrade(engine, "0008")
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT id FROM readouts ORDER BY id")).scalars().all()
        assert kept == old_ids
        assert conn.execute(sa.text("SELECT count(*) FROM evaluations")).scalar_one() == 2
        assert conn.execute(sa.text("SELECT count(*) FROM readout_blocks")).scalar_one() == 0
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(readout_blocks)).scalar_one() == 0
        assert conn.execute(select(readouts.c.draw)).scalars().all() == [0, 0]
    engine.dispose()
