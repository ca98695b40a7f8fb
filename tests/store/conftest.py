"""Every store and queue test runs on a fresh SQLite file and a fresh PostgreSQL database.

PostgreSQL is the server at HWCTL_TEST_POSTGRES_URL (default: 127.0.0.1:5432, database
`test`); each test gets its own temporary database `hwctl_test_<random>`, dropped
afterwards, so the shared database stays clean. Without a server the PostgreSQL cases
skip, or fail when CI=true.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from drivers.base import Geometry
from hwctl.mapping import DeviceMap, LayerWeights, map_network
from hwctl.store import records
from hwctl.store.engine import make_engine
from hwctl.store.migrate import upgrade
from hwctl.store.readouts import ProgrammingResult, finish_programming_run, start_programming_run
from tests.conftest import unavailable

POSTGRES_URL = os.environ.get("HWCTL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
GEOMETRY = Geometry(tiles=2, rows=16, cols=16)


def _postgres_admin() -> Engine:
    admin = make_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect():
            pass
    except OperationalError as exc:
        admin.dispose()
        reason = f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc.orig}"
        unavailable(reason)
    return admin


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, unmigrated."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hwctl.sqlite'}"
        return
    admin = _postgres_admin()
    name = f"hwctl_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated database."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def station_ids(engine: Engine) -> list[int]:
    with engine.begin() as conn:
        return [
            records.add_station(
                conn, f"station-{i}", resource=f"TCPIP::sim{i}::5025::SOCKET", chip_serial=f"SIM-{i}",
                geometry=GEOMETRY, amplitude_limit_ua=500.0, clock_kind="virtual",
            )
            for i in range(3)
        ]  # fmt: skip


@pytest.fixture
def device_map() -> DeviceMap:
    rng = np.random.default_rng(7)
    layers = [
        LayerWeights("conv1", rng.normal(size=(9, 4)).astype(np.float32)),
        LayerWeights("fc", rng.normal(size=(6, 3)).astype(np.float32)),
    ]
    return map_network(layers, GEOMETRY)


@pytest.fixture
def programmed_run(
    engine: Engine, station_ids: list[int], device_map: DeviceMap
) -> tuple[int, ProgrammingResult]:
    """A finished programming run of `device_map`, devices programmed at distinct board times."""
    n = device_map.n_devices
    rng = np.random.default_rng(11)
    result = ProgrammingResult(
        addresses=device_map.addresses,
        target_g_us=device_map.target_g_us,
        g_final_us=rng.uniform(0, 25, n).astype(np.float32),
        iterations=rng.integers(1, 20, n).astype(np.int32),
        status=np.zeros(n, np.uint8),
        programmed_s=1_000.0 + np.arange(n, dtype=np.float64) * 0.5,
    )
    with engine.begin() as conn:
        network = records.add_network(conn, "tiny", architecture="mlp", checkpoint=b"weights")
        mapping = records.add_mapping(
            conn, network_id=network, station_id=station_ids[0], device_map=device_map.to_bytes(),
            n_devices=n, utilisation=device_map.utilisation.fraction_of_chip,
        )  # fmt: skip
        run = start_programming_run(conn, mapping, {"tolerance_us": 0.5})
        finish_programming_run(conn, run, result)
    return run, result
