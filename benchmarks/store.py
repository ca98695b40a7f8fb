"""SQL store: whole-chip readout ingest and one-device history on SQLite and PostgreSQL.

A 923,744-device readout (ResNet-32 on the chip) is one row holding a float32 blob;
the baseline is the naive one-row-per-device insert, measured on a sample and scaled.
Then one device's series over 20 readouts (random devices), and loading all 20
readouts of the run from the store into `hwctl.analysis.drift.fit_drift`.

    python -m benchmarks.store --json benchmarks/results/store.json [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy
from sqlalchemy import Column, Engine, Float, Integer, MetaData, Table, insert
from sqlalchemy.engine import make_url

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


def measure(kind: str, postgres_url: str) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp, _database(kind, postgres_url, Path(tmp)) as engine:
        run, programmed_s = _programmed_run(engine, rng)
        ingest_ms = []
        for offset in log_spaced_offsets_s(points=READOUTS):
            g_us = rng.uniform(0, 25, N_DEVICES).astype(np.float32)

            def write(offset: float = offset, g_us: np.ndarray = g_us) -> None:
                with engine.begin() as conn:
                    add_readout(conn, run, offset_s=offset, scheduled_s=1_300 + offset,
                                board_time_s=1_300 + offset, g_us=g_us)  # fmt: skip

            ingest_ms.append(_ms(write))
        series_ms = []
        with engine.connect() as conn:
            for device in rng.integers(0, N_DEVICES, SERIES_QUERIES).tolist():
                start = time.perf_counter()
                device_series(conn, run, device)
                series_ms.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            g = np.stack([load_readout(conn, rid).g_us for rid, _ in run_readouts(conn, run)])
            board_s = np.array([1_300 + o for o in log_spaced_offsets_s(points=READOUTS)])
            load_s = time.perf_counter() - start
        start = time.perf_counter()
        fit_drift(g, board_s[:, None] - programmed_s[None, :])
        fit_s = time.perf_counter() - start
        baseline_ms = _baseline_row_per_device_ms(engine, g[0])
    ingest = statistics.median(ingest_ms)
    return {
        f"ingest_ms_{kind}": round(ingest, 1),
        f"ingest_ms_runs_{kind}": [round(x, 1) for x in ingest_ms],
        f"device_series_ms_{kind}": round(statistics.median(series_ms), 3),
        f"device_series_ms_p95_{kind}": round(float(np.percentile(series_ms, 95)), 3),
        f"baseline_row_per_device_ingest_ms_{kind}": round(baseline_ms, 0),
        f"ingest_speedup_vs_row_per_device_{kind}": round(baseline_ms / ingest, 0),
        f"load_run_s_{kind}": round(load_s, 3),
        f"drift_fit_s_{kind}": round(fit_s, 3),
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
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "numpy": np.__version__,
            "sqlalchemy": sqlalchemy.__version__,
        },
    }
    for kind in ("sqlite", "postgresql"):
        result.update(measure(kind, args.postgres_url))
    fits = [result["drift_fit_s_sqlite"], result["drift_fit_s_postgresql"]]
    result["drift_fit_s"] = min(fits)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
