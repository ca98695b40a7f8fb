"""What keeps the worker's and the API's memory bounded at any chip size, checked at a few
million devices: a stored vector leaves no copy behind (neither in SQLAlchemy's
compiled-statement cache nor in pysqlite's statement cache), and a readback block's
addresses come from the map's placement, equal to the whole map's."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Connection, Engine

from drivers.base import Geometry
from hwctl.heap import memory_summary, release_freed_heap
from hwctl.mapping import LayerWeights, map_network
from hwctl.program_verify import ProgrammingResult
from hwctl.store import records
from hwctl.store.engine import make_engine
from hwctl.store.fits import FitStatus, FittedLines, latest_device_fit, save_device_fit
from hwctl.store.migrate import upgrade
from hwctl.store.readouts import finish_programming_run, start_programming_run
from hwctl.store.run_parts import addresses_in_range, programming_vectors, run_placement
from tests.store.conftest import database_url, engine  # noqa: F401  (fixtures)

N_DEVICES = 4_000_000  # 68 MB of programming outcome, 52 MB of fit


def _held_mb() -> float:
    """The C heap in use (glibc: allocated from arenas plus mapped directly), MB."""
    gc.collect()
    release_freed_heap()
    summary = memory_summary()
    if "heap_used" not in summary:
        pytest.skip("needs glibc's mallinfo2")
    return summary["heap_used"] + summary["heap_mmapped"]


def _programming_run(conn: Connection, geometry: Geometry, device_map: bytes, n_devices: int) -> int:
    """A station, network and mapping with a programming run started on them: the run's id."""
    station = records.add_station(
        conn, "s", resource="sim", chip_serial="S", geometry=geometry, amplitude_limit_ua=500.0,
        clock_kind="virtual",
    )  # fmt: skip
    network = records.add_network(conn, "n", architecture="synthetic", checkpoint=b"-")
    mapping = records.add_mapping(
        conn, network_id=network, station_id=station, device_map=device_map, n_devices=n_devices,
        utilisation=1.0,
    )  # fmt: skip
    return start_programming_run(conn, mapping, {})


def test_storing_a_programming_run_and_its_fit_leaves_no_copy_of_them_behind(
    engine: Engine,  # noqa: F811  (the store tests' fixture: SQLite and PostgreSQL)
) -> None:
    """SQLite: neither cache keeps the values; PostgreSQL: no pooled connection keeps libpq's
    buffers at their size (112 MB held after the run's 68 MB were stored, before)."""
    with engine.begin() as conn:
        run_id = _programming_run(conn, Geometry(4, 512, 2048), bytes(8 << 20), N_DEVICES)
    before = _held_mb()
    rng = np.random.default_rng(1)
    result = ProgrammingResult(
        addresses=np.broadcast_to(np.uint32(0), (N_DEVICES,)),
        target_g_us=np.broadcast_to(np.float32(0), (N_DEVICES,)),
        g_final_us=rng.uniform(0, 25, N_DEVICES).astype(np.float32),
        iterations=rng.integers(1, 20, N_DEVICES).astype(np.int32),
        status=np.zeros(N_DEVICES, np.uint8),
        programmed_s=np.arange(N_DEVICES, dtype=np.float64),
    )
    fit = FittedLines(
        nu=rng.normal(0.05, 0.01, N_DEVICES).astype(np.float32),
        g_t0_us=rng.uniform(0, 25, N_DEVICES).astype(np.float32),
        r_squared=np.ones(N_DEVICES, np.float32),
        t0_s=20.0,
        status=np.full(N_DEVICES, FitStatus.OK, np.int8),
    )
    for _ in range(2):  # the second statement would find the first one's cached copies
        with engine.begin() as conn:
            finish_programming_run(conn, run_id, result)
            save_device_fit(conn, run_id, fit)
    with engine.connect() as conn:
        stored = programming_vectors(conn, run_id, ("g_final", "programmed_s"))
        stored_fit = latest_device_fit(conn, run_id)
    assert np.array_equal(stored["g_final"], result.g_final_us)
    assert np.array_equal(stored["programmed_s"], result.programmed_s)
    assert stored_fit.lines is not None and np.array_equal(stored_fit.lines.nu, fit.nu)
    del result, fit, stored, stored_fit
    assert _held_mb() - before < 8.0  # SQLite: 230 MB before, each statement's values kept twice


def test_a_blocks_addresses_from_the_placement_are_the_maps(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    layers = [
        LayerWeights("conv", rng.normal(size=(600, 40)).astype(np.float32)),  # cut over word lines
        LayerWeights("wide", rng.normal(size=(30, 700)).astype(np.float32)),  # and over bit lines
        LayerWeights("fc", rng.normal(size=(77, 13)).astype(np.float32)),
    ]
    geometry = Geometry(6, 256, 512)
    device_map = map_network(layers, geometry)
    sqlite = make_engine(f"sqlite:///{tmp_path / 'placement.sqlite'}")
    upgrade(sqlite)
    with sqlite.begin() as conn:
        run_id = _programming_run(conn, geometry, device_map.to_bytes(), device_map.n_devices)
        stored_geometry, placed = run_placement(conn, run_id)
    sqlite.dispose()
    n = device_map.n_devices
    assert np.array_equal(addresses_in_range(stored_geometry, placed, 0, n), device_map.addresses)
    for start, stop in [(0, 1), (n - 1, n), *(sorted(rng.integers(0, n + 1, 2)) for _ in range(100))]:
        block = addresses_in_range(stored_geometry, placed, start, stop)
        assert np.array_equal(block, device_map.addresses[start:stop])
