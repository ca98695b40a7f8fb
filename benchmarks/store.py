"""SQL store: whole-chip readout ingest and one-device history on SQLite and PostgreSQL.

A 923,744-device readout (ResNet-32 on the chip) is one row holding a float32 blob;
the baseline is the naive one-row-per-device insert, measured on a sample and scaled.
Then one device's series over 20 readouts (random devices), and loading all 20
readouts of the run from the store into `hwctl.analysis.drift.fit_drift`. For
comparison, the layouts before the store's fixes: SQLite with 4 KiB pages and the
default auto-checkpoint, and PostgreSQL results in text (hex) instead of binary.

    python -m benchmarks.store --json benchmarks/results/store.json [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy
from sqlalchemy import Column, Engine, Float, Integer, MetaData, Table, bindparam, event, insert, select
from sqlalchemy.engine import make_url

from benchmarks.common import emit, machine_info
from drivers.base import Geometry
from hwctl.analysis.drift import fit_drift
from hwctl.schedule import log_spaced_offsets_s
from hwctl.store import records
from hwctl.store.engine import make_engine
from hwctl.store.migrate import upgrade
from hwctl.store.readouts import (
    ProgrammingResult,
    add_readout,
    device_series,
    finish_programming_run,
    load_readout,
    run_readouts,
    start_programming_run,
)
from hwctl.store.schema import readout_blocks
from hwctl.store.vectors import decode_row

N_DEVICES = 923_744
READOUTS = 20
BASELINE_SAMPLE = 20_000
SERIES_QUERIES = 200
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _ms(f: Callable[[], object]) -> float:
    start = time.perf_counter()
    f()
    return (time.perf_counter() - start) * 1e3


@contextmanager
def _database(kind: str, postgres_url: str, workdir: Path) -> Iterator[Engine]:
    """A fresh, migrated database (a temporary one on the PostgreSQL server)."""
    if kind == "sqlite":
        engine = make_engine(f"sqlite:///{workdir / 'bench.sqlite'}")
        upgrade(engine)
        yield engine
        engine.dispose()
        return
    admin = make_engine(postgres_url, isolation_level="AUTOCOMMIT")
    name = f"hwctl_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = make_engine(make_url(postgres_url).set(database=name).render_as_string(hide_password=False))
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _programmed_run(engine: Engine, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    programmed_s = 1_000.0 + rng.uniform(0, 300, N_DEVICES)  # programming took 5 minutes
    with engine.begin() as conn:
        station = records.add_station(
            conn, "bench", resource="sim", chip_serial="SIM", geometry=Geometry(34, 256, 128),
            amplitude_limit_ua=500.0, clock_kind="virtual",
        )  # fmt: skip
        network = records.add_network(conn, "resnet32", architecture="resnet32", checkpoint=b"-")
        mapping = records.add_mapping(
            conn,
            network_id=network,
            station_id=station,
            device_map=b"-",
            n_devices=N_DEVICES,
            utilisation=0.83,
        )
        run = start_programming_run(conn, mapping, {})
        result = ProgrammingResult(
            addresses=np.arange(N_DEVICES, dtype=np.uint32),
            target_g_us=rng.uniform(0, 25, N_DEVICES).astype(np.float32),
            g_final_us=rng.uniform(0, 25, N_DEVICES).astype(np.float32),
            iterations=rng.integers(1, 20, N_DEVICES).astype(np.int32),
            status=np.zeros(N_DEVICES, np.uint8),
            programmed_s=programmed_s,
        )
        finish_programming_run(conn, run, result)
    return run, programmed_s


def _baseline_row_per_device_ms(engine: Engine, g_us: np.ndarray) -> float:
    """Naive schema: one (readout, device, g) row per device, executemany; scaled to a chip."""
    table = Table(
        "bench_device_rows", MetaData(),
        Column("readout_id", Integer), Column("device", Integer), Column("g_us", Float),
    )  # fmt: skip
    table.create(engine)
    rows = [{"readout_id": 1, "device": i, "g_us": float(g)} for i, g in enumerate(g_us[:BASELINE_SAMPLE])]

    def write() -> None:
        with engine.begin() as conn:
            conn.execute(insert(table), rows)

    return _ms(write) * N_DEVICES / BASELINE_SAMPLE


def _ingest_ms(engine: Engine, run: int, rng: np.random.Generator) -> list[float]:
    """Write the run's 20 readouts, each in its own transaction (commit included)."""
    ingest_ms = []
    for offset in log_spaced_offsets_s(points=READOUTS):
        g_us = rng.uniform(0, 25, N_DEVICES).astype(np.float32)

        def write(offset: float = offset, g_us: np.ndarray = g_us) -> None:
            with engine.begin() as conn:
                add_readout(conn, run, offset_s=offset, scheduled_s=1_300 + offset,
                            board_time_s=1_300 + offset, g_us=g_us)  # fmt: skip

        ingest_ms.append(_ms(write))
    return ingest_ms


def _series_ms(engine: Engine, run: int, rng: np.random.Generator) -> list[float]:
    """One random device's series at a time, straight after the ingest."""
    with engine.connect() as conn:
        devices = rng.integers(0, N_DEVICES, SERIES_QUERIES).tolist()
        return [_ms(partial(device_series, conn, run, device)) for device in devices]


def _load_text_ms(engine: Engine, readout_ids: list[int]) -> list[float]:
    """PostgreSQL's default text results (hex bytea): how `load_readout` fetched before."""
    with engine.connect() as conn:
        query = (
            select(readout_blocks)
            .where(readout_blocks.c.readout_id == bindparam("id"))
            .order_by(readout_blocks.c.first_device)
        )

        def load(readout_id: int) -> None:
            for row in conn.execute(query, {"id": readout_id}):
                decode_row(row, "g", what=f"readout {readout_id} block {row.first_device}")

        return [_ms(partial(load, readout_id)) for readout_id in readout_ids]


def _previous_sqlite_layout(workdir: Path) -> Engine:
    """The layout before 32 KiB pages: a file created with 4 KiB pages and SQLite's default
    auto-checkpoint (1000 pages), so the newest readouts are still in the WAL when read."""
    path = workdir / "previous.sqlite"
    with sqlite3.connect(path) as raw:
        raw.executescript("PRAGMA page_size=4096; CREATE TABLE layout(x); DROP TABLE layout;")
    engine = make_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA wal_autocheckpoint=1000"))
    upgrade(engine)
    return engine


def _median(values: list[float], digits: int) -> float:
    return round(statistics.median(values), digits)


def measure(kind: str, postgres_url: str) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, _database(kind, postgres_url, Path(tmp)) as engine:
        run, programmed_s = _programmed_run(engine, rng)
        ingest_ms = _ingest_ms(engine, run, rng)
        series_ms = _series_ms(engine, run, rng)
        with engine.connect() as conn:
            ids = [rid for rid, _ in run_readouts(conn, run)]
            load_ms = [_ms(partial(load_readout, conn, rid)) for rid in ids]
            start = time.perf_counter()
            g = np.stack([load_readout(conn, rid).g_us for rid in ids])
            load_s = time.perf_counter() - start
        board_s = np.array([1_300 + o for o in log_spaced_offsets_s(points=READOUTS)])
        start = time.perf_counter()
        fit_drift(g, board_s[:, None] - programmed_s[None, :])
        fit_s = time.perf_counter() - start
        baseline_ms = _baseline_row_per_device_ms(engine, g[0])
        if kind == "postgresql":
            result["load_readout_ms_postgresql_text_results"] = _median(_load_text_ms(engine, ids), 1)
        if kind == "sqlite":
            previous = _previous_sqlite_layout(Path(tmp))
            previous_run, _ = _programmed_run(previous, rng)
            previous_ingest = _ingest_ms(previous, previous_run, rng)
            result["ingest_ms_sqlite_4k_pages"] = _median(previous_ingest, 1)
            result["device_series_ms_sqlite_4k_pages"] = _median(_series_ms(previous, previous_run, rng), 3)
            previous.dispose()
    ingest = statistics.median(ingest_ms)
    return {
        f"ingest_ms_{kind}": round(ingest, 1),
        f"ingest_ms_runs_{kind}": [round(x, 1) for x in ingest_ms],
        f"device_series_ms_{kind}": _median(series_ms, 3),
        f"device_series_ms_p95_{kind}": round(float(np.percentile(series_ms, 95)), 3),
        f"load_readout_ms_{kind}": _median(load_ms, 1),
        f"baseline_row_per_device_ingest_ms_{kind}": round(baseline_ms, 0),
        f"ingest_speedup_vs_row_per_device_{kind}": round(baseline_ms / ingest, 0),
        f"load_run_s_{kind}": round(load_s, 3),
        f"drift_fit_s_{kind}": round(fit_s, 3),
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--postgres-url", default=os.environ.get("HWCTL_TEST_POSTGRES_URL", DEFAULT_POSTGRES))
    args = parser.parse_args()
    result: dict[str, Any] = {
        "n_devices": N_DEVICES,
        "readouts": READOUTS,
        "baseline_sample_devices": BASELINE_SAMPLE,
        "machine": machine_info(numpy=np.__version__, sqlalchemy=sqlalchemy.__version__),
    }
    for kind in ("sqlite", "postgresql"):
        result.update(measure(kind, args.postgres_url))
    fits = [result["drift_fit_s_sqlite"], result["drift_fit_s_postgresql"]]
    result["drift_fit_s"] = min(fits)
    emit(result, args.json)


if __name__ == "__main__":
    main()
