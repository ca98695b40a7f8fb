"""A 43.6 M-device chip end to end: ResNet-34 through the real API, worker and TCP chip.

1. The campaign (`--campaign`, on SQLite and on PostgreSQL): `hwctl sim-chip --geometry
   50m` (virtual clock), `hwctl serve --no-embedded` and `hwctl worker` as separate
   processes; the seeded ResNet-34 checkpoint (21.8 M weights = 43.6 M devices) uploaded,
   an experiment of 20 log-spaced readbacks submitted over HTTP, followed to `done`
   (map, program-and-verify over pyvisa TCP, 20 readbacks stored in blocks, the drift
   fit), then its report plots and a readout download through the API. Each process's
   peak RSS is read from /proc/PID/status (VmHWM) before it is stopped.
2. On the campaign's database, in this process: one device's series over the 20
   readouts, one readout read whole block by block, and storing one more 43.6 M readout
   (`add_readout`), beside the layouts it replaced or could have used: one blob per
   readout, and SQLite incremental blob I/O / PostgreSQL large objects written and read
   per block.
3. Scaling (`--scaling`): for 1 M, 5 M, 20 M devices (and 43.6 M) program-and-verify in
   process, storing 20 readouts, the drift fit over them (store-streamed), in seconds
   per million devices.

    python -m benchmarks.scale --json benchmarks/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url

from benchmarks.common import emit, machine_info
from drivers.base import Geometry
from hwctl.analysis.run_fit import RANGE_DEVICES, fit_ranges, stored_ranges
from hwctl.schedule import log_spaced_offsets_s
from hwctl.store import records
from hwctl.store.engine import is_sqlite, make_engine
from hwctl.store.migrate import upgrade
from hwctl.store.readouts import (
    ProgrammingResult,
    add_readout,
    device_series,
    finish_programming_run,
    iter_readout_blocks,
    list_readouts,
    read_block_starts,
    start_programming_run,
)
from hwctl.store.schema import programming_runs, readouts

REPO = Path(__file__).resolve().parents[1]
HWCTL = [sys.executable, "-c", "import sys; from hwctl.cli import main; sys.exit(main())"]
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
GEOMETRY_50M = Geometry(48, 512, 2048)
READOUTS = 20
SERIES_QUERIES = 20
SCALING_N = (1_000_000, 5_000_000, 20_000_000)
PLOTS = ("histograms", "programming_error", "drift", "heatmap", "accuracy")
# The worker's read (and stored) block: 4 MiB of float32, 42 blocks and heartbeat commits
# for a 43.6 M-device readback (1 MiB blocks: 167 commits of ~16 ms each on SQLite).
BLOCK_DEVICES = 1 << 20
TARGETS = {
    "pv_s_inprocess": 40.0,
    "pv_s_visa": 80.0,
    "readout_tcp_s": 5.0,
    "store_s": 2.0,
    "series_ms": 10.0,
    "fit_s": 60.0,
    "campaign_s": 1200.0,
    "rss_gb": {"worker": 4.0, "api": 1.0, "chip": 2.0},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peak_rss_gb(pid: int) -> float:
    """The process's high-water resident set (VmHWM), GB."""
    return _status_gb(pid, "VmHWM")


def _reset_peak(pid: int) -> None:
    """Set the process's VmHWM back to its VmRSS (Linux `clear_refs`), so the next reading is
    the peak of what follows; the peak so far is lost, so read it first."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _status_gb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024**2
    raise RuntimeError(f"no {field} for process {pid}")


class Processes:
    """The campaign's child processes, each logging to a file, stopped (SIGTERM) at the end."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.args: dict[str, tuple[str, ...]] = {}
        self.restarts: list[str] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [*HWCTL, *args], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.running[name] = process
        self.args[name] = args
        return process

    def revive(self) -> list[str]:
        """Start again the API or worker if it exited (as a supervisor's restart policy would:
        other engineers' fault tests restart the shared PostgreSQL server, and a worker
        that cannot open its database at start exits); returns their names."""
        revived = [n for n, p in self.running.items() if n != "chip" and p.poll() is not None]
        for name in revived:
            self.start(name, *self.args[name])
        self.restarts.extend(revived)
        return revived

    def run(self, *args: str) -> None:
        subprocess.run([*HWCTL, *args], cwd=REPO, env=self.env, check=True, capture_output=True)

    def peak_rss_gb(self) -> dict[str, float]:
        return {name: round(_peak_rss_gb(p.pid), 3) for name, p in self.running.items() if p.poll() is None}

    def rss_gb(self, field: str = "VmRSS") -> dict[str, float]:
        """Each running process's resident set now (VmRSS, or its RssAnon / RssFile part), GB."""
        return {name: _status_gb(p.pid, field) for name, p in self.running.items() if p.poll() is None}

    def stop(self) -> None:
        for process in self.running.values():
            process.terminate()
        for process in self.running.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


@contextmanager
def database(kind: str, workdir: Path, postgres_url: str) -> Iterator[str]:
    """A fresh database URL (a SQLite file, or a new database on the PostgreSQL server), dropped after."""
    if kind == "sqlite":
        path = workdir / "scale.sqlite"
        try:
            yield f"sqlite:///{path}"
        finally:
            for leftover in workdir.glob("scale.sqlite*"):
                leftover.unlink()
        return
    admin = make_engine(postgres_url, isolation_level="AUTOCOMMIT")
    name = f"hwctl_scale_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


# Networks of this benchmark's own, uploaded as `.pt2` graphs (`hwctl export`, the
# bring-your-own path): name -> (ImageNet ResNet blocks per stage, widths). "resnet34-w13" is
# ResNet-34's ImageNet layout (37 analog layers, 1000 classes) at 13/64 of its width:
# 983,021 weights = 1,966,042 devices, the ~2 M-device campaign CI runs.
SCALED_ARCHS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "resnet34-w13": ((3, 4, 6, 3), (13, 26, 52, 104)),
    "resnet34-w32": ((3, 4, 6, 3), (32, 64, 128, 256)),  # half width: 11,150,528 devices
}
SCALED_INPUT_SHAPE = "3,64,64"  # fully convolutional: a small input keeps the export's check quick


def resnet34_w13() -> Any:
    """`SCALED_ARCHS["resnet34-w13"]` with seeded He-initialised weights (for `hwctl export`)."""
    return _scaled_model("resnet34-w13")


def resnet34_w32() -> Any:
    """`SCALED_ARCHS["resnet34-w32"]` with seeded He-initialised weights (for `hwctl export`)."""
    return _scaled_model("resnet34-w32")


def _scaled_model(arch: str) -> Any:
    import torch

    from hwctl.nn.models import ImageNetResNet

    blocks, widths = SCALED_ARCHS[arch]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ImageNetResNet(blocks, widths)


def _checkpoint(arch: str, workdir: Path, run: Callable[..., None]) -> Path:
    """The network to upload: a registered architecture's seeded checkpoint, or one of
    `SCALED_ARCHS` exported as a `.pt2` by `hwctl export` (through `run`)."""
    if arch in SCALED_ARCHS:
        path = workdir / f"{arch}.pt2"
        factory = arch.replace("-", "_")  # this module's function building it
        run("export", f"benchmarks.scale:{factory}", "--input-shape", SCALED_INPUT_SHAPE, "--out", str(path))
        return path
    import torch

    from hwctl.nn.models import seeded_checkpoint

    path = workdir / f"{arch}.pt"
    checkpoint = seeded_checkpoint(arch, seed=0)
    torch.save({"arch": checkpoint.arch, "state_dict": checkpoint.state_dict, "meta": checkpoint.meta}, path)
    return path


def run_campaign(
    db_url: str,
    workdir: Path,
    *,
    arch: str = "resnet34",
    geometry: str = "50m",
    block_devices: int = BLOCK_DEVICES,
    offsets_s: list[float] | None = None,
    timeout_s: float = 3600.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One whole campaign through `hwctl serve`, `hwctl worker` and `hwctl sim-chip`
    processes; wall seconds per stage and each process's peak RSS."""
    env = {
        **os.environ,
        "HWCTL_DATABASE_URL": db_url,
        "HWCTL_MAX_UPLOAD_BYTES": str(1 << 30),
        "HWCTL_MAX_UPLOAD_EXPANDED_BYTES": str(1 << 30),
        "HWCTL_API_KEYS": "",
        "PYTHONUNBUFFERED": "1",
    }
    processes = Processes(workdir, env)
    worker_log = workdir / "worker.log"
    log_offset = worker_log.stat().st_size if worker_log.exists() else 0
    checkpoint = _checkpoint(arch, workdir, processes.run)
    processes.run("db", "upgrade")
    chip_port, api_port = _free_port(), _free_port()
    stages: dict[str, float] = {}
    try:
        processes.start(
            "chip",
            "sim-chip",
            "--port",
            str(chip_port),
            "--geometry",
            geometry,
            "--clock",
            "virtual",
            "--watchdog-s",
            "0",
        )
        _wait(lambda: _connectable(chip_port), "the chip's port", 120)
        resource = f"TCPIP::127.0.0.1::{chip_port}::SOCKET"
        processes.run("station", "add", "scale", "--resource", resource, "--probe", "--clock", "virtual")
        processes.start("api", "serve", "--no-embedded", "--port", str(api_port))
        processes.start(
            "worker", "worker", "--station", "scale", "--block-devices", str(block_devices), "--poll-s", "0.2"
        )
        client = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=600.0)
        _wait(lambda: _healthy(client), "the API", 120)
        with checkpoint.open("rb") as upload:
            network = client.post("/networks", files={"file": (checkpoint.name, upload)}, data={"name": arch})
        network.raise_for_status()
        # Evaluation off: accuracy is not the point here (and there is no ImageNet on this machine).
        spec: dict[str, Any] = {
            "network_id": network.json()["id"],
            "station": "scale",
            "evaluation": {"enabled": False},
        }
        if offsets_s is not None:
            spec["schedule"] = {"offsets_s": offsets_s}
        start = time.perf_counter()
        submitted = client.post("/experiments", json=spec)
        submitted.raise_for_status()
        experiment_id = int(submitted.json()["experiment"]["id"])
        jobs = _follow(client, experiment_id, start, timeout_s, log, processes)
        stages["campaign_s"] = time.perf_counter() - start
        rss_before_report = processes.peak_rss_gb()
        rss_now_before_report = {k: round(v, 3) for k, v in processes.rss_gb().items()}
        report_start = time.perf_counter()
        plot_s, plot_peak_gb = {}, {}
        api_pid = processes.running["api"].pid
        for name in PLOTS:
            _reset_peak(api_pid)
            plot_start = time.perf_counter()
            client.get(f"/experiments/{experiment_id}/plots/{name}").raise_for_status()
            plot_s[name] = round(time.perf_counter() - plot_start, 2)
            plot_peak_gb[name] = round(_peak_rss_gb(api_pid), 3)
        stages["report_s"] = time.perf_counter() - report_start
        readout_ids = [
            r["id"]
            for r in client.get("/readouts", params={"experiment_id": experiment_id, "limit": 100}).json()[
                "items"
            ]
        ]
        download_start = time.perf_counter()
        size = 0
        with client.stream("GET", f"/readouts/{readout_ids[-1]}/vector") as response:
            for chunk in response.iter_bytes():
                size += len(chunk)
        stages["download_s"] = time.perf_counter() - download_start
        ranged = client.get(f"/readouts/{readout_ids[-1]}/vector", headers={"Range": f"bytes={size - 4096}-"})
        rss = processes.peak_rss_gb()
        # The API's peak was reset before each plot: its whole peak is the largest of the parts.
        rss["api"] = max(rss["api"], rss_before_report["api"], *plot_peak_gb.values())
    finally:
        processes.stop()
    return {
        "worker_memory_mb_by_job": _worker_memory(worker_log, log_offset),
        "experiment_id": experiment_id,
        "readouts_stored": len(readout_ids),
        "download_bytes": size,
        "range_status": ranged.status_code,
        "jobs": jobs,
        **{k: round(v, 2) for k, v in stages.items()},
        "plot_s": plot_s,
        "api_peak_gb_by_plot": plot_peak_gb,
        "block_devices": block_devices,
        "rss_gb_before_report": rss_before_report,
        "rss_gb_now_before_report": rss_now_before_report,
        "rss_gb": rss,
        "restarted": processes.restarts,
    }


_MEMORY_LINE = re.compile(r": (\w+) job \d+ (starts|over).*memory (.*)$")


def _worker_memory(log: Path, offset: int) -> dict[str, dict[str, float]]:
    """From the worker's log (each job's memory as it starts and ends, `hwctl.heap`): per job
    kind, the largest VmRSS when one starts and ends (what the worker holds between jobs),
    and VmHWM when one ends (its peak so far)."""
    out: dict[str, dict[str, float]] = {}
    with log.open("rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            found = _MEMORY_LINE.search(line)
            if not found:
                continue
            kind, when, fields = found.groups()
            values = dict(part.split("=") for part in fields.split() if "=" in part)
            entry = out.setdefault(kind, {})
            for field in ("VmRSS", "VmHWM") if when == "over" else ("VmRSS",):
                if field in values:
                    key = f"{field}_{'at_start' if when == 'starts' else 'at_end'}"
                    entry[key] = max(entry.get(key, 0.0), float(values[field].removesuffix("MB")))
    return out


def _get(client: httpx.Client, path: str, **params: Any) -> Any:
    """GET as JSON, waiting out a database outage (503: other engineers restart the shared
    PostgreSQL server in their fault tests)."""
    for _ in range(120):
        try:
            response = client.get(path, params=params)
        except httpx.TransportError:  # the API itself restarting
            time.sleep(1.0)
            continue
        if response.status_code != 503:
            response.raise_for_status()
            return response.json()
        time.sleep(1.0)
    raise TimeoutError(f"GET {path}: the database stayed unavailable")


def _connectable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/stations").status_code == 200
    except httpx.HTTPError:
        return False


def _wait(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _follow(
    client: httpx.Client, experiment_id: int, start: float, timeout_s: float, log: Callable[[str], None],
    processes: Processes,
) -> dict[str, Any]:  # fmt: skip
    """Poll the experiment's jobs until it ends; wall seconds each job was seen running, and
    each process's largest sampled RSS while each kind of job ran."""
    seen: dict[int, dict[str, Any]] = {}
    rss_by_phase: dict[str, float] = {}
    status = "?"
    ended = ("done", "failed", "cancelled")
    while status not in ended or any(j["ended"] is None for j in seen.values()):  # jobs complete after
        now = time.perf_counter() - start
        status = _get(client, f"/experiments/{experiment_id}")["status"]
        page = _get(client, "/jobs", experiment_id=experiment_id, limit=100)["items"]
        for job in page:
            entry = seen.setdefault(job["id"], {"kind": job["kind"], "started": None, "ended": None})
            if job["status"] == "running" and entry["started"] is None:
                entry["started"] = now
            if job["status"] in ("succeeded", "failed", "missed", "cancelled") and entry["ended"] is None:
                entry["ended"] = now
                entry["status"] = job["status"]
                entry["started"] = entry["started"] if entry["started"] is not None else now
                log(f"{now:8.1f} s  {job['kind']} {job['id']} {job['status']} {job['progress_message']}")
        for name in processes.revive():
            log(f"{now:8.1f} s  {name} had exited: started again")
        running = {j["kind"] for j in page if j["status"] == "running"} or {"idle"}
        for field, suffix in (("VmRSS", ""), ("RssAnon", "_anon")):
            for name, gb in processes.rss_gb(field).items():
                for kind in running:
                    key = f"{name}{suffix}_during_{kind}"
                    rss_by_phase[key] = round(max(rss_by_phase.get(key, 0.0), gb), 3)
        if now > timeout_s:
            raise TimeoutError(f"experiment {experiment_id} still {status} after {timeout_s} s")
        time.sleep(0.5)
    if status != "done":
        raise RuntimeError(f"experiment {experiment_id} ended {status}: {page}")

    def durations(kind: str) -> list[float]:
        return [
            round(j["ended"] - j["started"], 2) for j in seen.values() if j["kind"] == kind and j["ended"]
        ]

    return {
        "program_s": durations("program"),
        "readback_s": durations("readback"),
        "analyze_s": durations("analyze"),
        "statuses": sorted({j.get("status", "?") for j in seen.values()}),
        "rss_gb_sampled_by_phase": rss_by_phase,
    }


# -- the store, in this process ----------------------------------------------------------------
def store_figures(engine: Engine, run_id: int, rng: np.random.Generator) -> dict[str, Any]:
    """On a database holding a run's 20 readouts: one device's series, one readout read
    whole, and storing one more readout (three times), chunked as stored, beside the
    alternatives."""
    with engine.connect() as conn:
        n_devices = int(
            conn.execute(
                select(programming_runs.c.programmed_s_len).where(programming_runs.c.id == run_id)
            ).scalar_one()
        )
        stored = list_readouts(conn, run_id)
    series_ms = []
    for device in rng.integers(0, n_devices, SERIES_QUERIES):
        with engine.connect() as conn:
            series_ms.append(_ms(partial(device_series, conn, run_id, int(device))))
    with engine.connect() as conn:
        read_s = _ms(lambda: sum(g.size for _, g in iter_readout_blocks(conn, stored[-1].id))) / 1e3
    g_us = rng.uniform(0, 25, n_devices).astype(np.float32)
    store_s = []
    for k in range(3):
        with engine.begin() as conn:
            start = time.perf_counter()
            add_readout(conn, run_id, offset_s=1e9 + k, scheduled_s=1e9 + k, board_time_s=1e9 + k, g_us=g_us)
        store_s.append(time.perf_counter() - start)  # commit included
    return {
        "n_devices": n_devices,
        "readouts": len(stored),
        "series_ms_median": round(statistics.median(series_ms), 2),
        "series_ms_max": round(max(series_ms), 2),
        "read_whole_s": round(read_s, 2),
        "store_s_each": [round(s, 2) for s in store_s],
        "store_s": round(statistics.median(store_s), 2),
        "layouts": compare_layouts(engine, g_us, rng),
    }


def compare_layouts(engine: Engine, g_us: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """Write, read whole and read one device of one readout in each layout (seconds, ms)."""
    blob = g_us.tobytes()
    block_bytes = 4 << 20
    devices = rng.integers(0, g_us.size, SERIES_QUERIES)
    out: dict[str, Any] = {}
    with engine.begin() as conn:
        blob_type = "BLOB" if is_sqlite(conn) else "BYTEA"
        conn.exec_driver_sql(f"CREATE TABLE bench_blob (id INTEGER PRIMARY KEY, g {blob_type}, crc BIGINT)")
        if not is_sqlite(conn):
            conn.exec_driver_sql("ALTER TABLE bench_blob ALTER COLUMN g SET STORAGE EXTERNAL")
    with engine.begin() as conn:
        write_s = (
            _ms(
                lambda: conn.execute(
                    text("INSERT INTO bench_blob VALUES (1, :g, :c)"), {"g": blob, "c": zlib.crc32(blob)}
                )
            )
            / 1e3
        )
    with engine.connect() as conn:
        read_s = (
            _ms(lambda: zlib.crc32(conn.execute(text("SELECT g FROM bench_blob WHERE id = 1")).scalar_one()))
            / 1e3
        )
        one_ms = statistics.median(_ms(partial(_substr, conn, int(d))) for d in devices)
    out["one_blob_row"] = {
        "write_s": round(write_s, 2),
        "read_whole_s": round(read_s, 2),
        "one_device_ms": round(one_ms, 3),
    }
    with engine.begin() as conn:
        if is_sqlite(conn):
            raw = _sqlite(conn)

            def incremental() -> None:
                raw.execute("INSERT INTO bench_blob VALUES (2, zeroblob(?), 0)", (len(blob),))
                with raw.blobopen("bench_blob", "g", 2) as handle:
                    for offset in range(0, len(blob), block_bytes):
                        handle.write(blob[offset : offset + block_bytes])

            write_s = _ms(incremental) / 1e3
            name = "sqlite_incremental_blob"
        else:

            def large_object() -> None:
                oid = conn.execute(text("SELECT lo_create(0)")).scalar_one()
                conn.execute(text("INSERT INTO bench_blob VALUES (2, NULL, :oid)"), {"oid": oid})
                for offset in range(0, len(blob), block_bytes):
                    conn.execute(
                        text("SELECT lo_put(:oid, :o, :b)"),
                        {"oid": oid, "o": offset, "b": blob[offset : offset + block_bytes]},
                    )

            write_s = _ms(large_object) / 1e3
            name = "postgresql_large_object"
    with engine.connect() as conn:
        if is_sqlite(conn):
            raw = _sqlite(conn)

            def read_all() -> None:
                with raw.blobopen("bench_blob", "g", 2, readonly=True) as handle:
                    while handle.read(block_bytes):
                        pass

            def read_one(device: int) -> None:
                with raw.blobopen("bench_blob", "g", 2, readonly=True) as handle:
                    handle.seek(device * 4)
                    handle.read(4)
        else:
            oid = conn.execute(text("SELECT crc FROM bench_blob WHERE id = 2")).scalar_one()

            def read_all() -> None:
                for offset in range(0, len(blob), block_bytes):
                    conn.execute(
                        text("SELECT lo_get(:oid, :o, :n)"), {"oid": oid, "o": offset, "n": block_bytes}
                    )

            def read_one(device: int) -> None:
                conn.execute(text("SELECT lo_get(:oid, :o, 4)"), {"oid": oid, "o": device * 4}).scalar_one()

        read_s = _ms(read_all) / 1e3
        one_ms = statistics.median(_ms(partial(read_one, int(d))) for d in devices)
    out[name] = {
        "write_s": round(write_s, 2),
        "read_whole_s": round(read_s, 2),
        "one_device_ms": round(one_ms, 3),
    }
    with engine.begin() as conn:
        if not is_sqlite(conn):
            conn.exec_driver_sql("SELECT lo_unlink(crc::oid) FROM bench_blob WHERE id = 2")
        conn.exec_driver_sql("DROP TABLE bench_blob")
    return out


def _substr(conn: Any, device: int) -> bytes:
    query = text("SELECT substr(g, :o, 4) FROM bench_blob WHERE id = 1")
    return bytes(conn.execute(query, {"o": device * 4 + 1}).scalar_one())


def _ms(f: Callable[[], object]) -> float:
    start = time.perf_counter()
    f()
    return (time.perf_counter() - start) * 1e3


def _sqlite(conn: Any) -> sqlite3.Connection:
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    return raw


def _campaign_run_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.max(readouts.c.run_id))).scalar_one())


# -- scaling, in this process -------------------------------------------------------------------
def _synthetic_targets(n_devices: int, rng: np.random.Generator) -> np.ndarray:
    w = rng.standard_normal(n_devices // 2)
    targets = np.concatenate([np.maximum(w, 0), np.maximum(-w, 0)]) * 25.0 / np.abs(w).max()
    return np.resize(targets, n_devices).astype(np.float32)


def pv_inprocess_s(n_devices: int) -> tuple[float, ProgrammingResult]:
    """Program-and-verify of `n_devices` synthetic targets on an in-process 50 M-device chip."""
    from drivers.sim.board import SimBoard
    from hwctl.program_verify import program_and_verify

    board = SimBoard(GEOMETRY_50M, seed=1)
    targets = _synthetic_targets(n_devices, np.random.default_rng(0))
    start = time.perf_counter()
    result = program_and_verify(board, np.arange(n_devices, dtype=np.uint32), targets)
    return time.perf_counter() - start, result


def scaling_point(n_devices: int, engine: Engine, rng: np.random.Generator) -> dict[str, float]:
    """Seconds for each stage at `n_devices`: P&V in process, storing 20 readouts (SQLite),
    reading one back block by block, and the store-streamed drift fit over all 20."""
    pv_s, result = pv_inprocess_s(n_devices)
    with engine.begin() as conn:
        station = records.add_station(
            conn,
            f"n{n_devices}",
            resource="sim",
            chip_serial="SIM",
            geometry=GEOMETRY_50M,
            amplitude_limit_ua=500.0,
            clock_kind="virtual",
        )
        network = records.add_network(conn, f"n{n_devices}", architecture="synthetic", checkpoint=b"-")
        mapping = records.add_mapping(
            conn,
            network_id=network,
            station_id=station,
            device_map=b"-",
            n_devices=n_devices,
            utilisation=1.0,
        )
        run_id = start_programming_run(conn, mapping, {})
        finish_programming_run(conn, run_id, result)
    end_s = float(result.programmed_s.max())
    offsets = log_spaced_offsets_s(points=READOUTS)
    store_s = 0.0
    for offset in offsets:
        g_us = (result.g_final_us * (1 + offset) ** -0.05 * rng.normal(1, 0.02, n_devices)).astype(np.float32)
        with engine.begin() as conn:
            start = time.perf_counter()
            add_readout(
                conn,
                run_id,
                offset_s=offset,
                scheduled_s=end_s + offset,
                board_time_s=end_s + offset,
                g_us=g_us,
            )
        store_s += time.perf_counter() - start
        del g_us
    with engine.connect() as conn:
        stored = list_readouts(conn, run_id)
        read_s = _ms(lambda: sum(g.size for _, g in iter_readout_blocks(conn, stored[-1].id))) / 1e3
        fit_start = time.perf_counter()
        starts = [read_block_starts(conn, r.id)[0] for r in stored]
        fit_ranges(
            stored_ranges(conn, [r.id for r in stored], starts, result.programmed_s, RANGE_DEVICES),
            result.target_g_us,
            len(stored),
            result.status == 0,
        )
        fit_s = time.perf_counter() - fit_start
    return {
        "pv_inprocess_s": pv_s,
        "store_one_readout_s": store_s / len(offsets),
        "read_one_readout_s": read_s,
        "fit_s": fit_s,
    }


def per_million(stages: dict[str, float], n_devices: int) -> dict[str, float]:
    return {k: round(v / (n_devices / 1e6), 4) for k, v in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--postgres-url", default=os.environ.get("HWCTL_BENCH_POSTGRES", DEFAULT_POSTGRES))
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--skip-campaign", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument(
        "--scaling-sizes",
        default=",".join(str(n) for n in SCALING_N),
        help="device counts of the scaling run besides the campaign's ('' for the campaign's only)",
    )
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--geometry", default="50m")
    parser.add_argument("--block-devices", type=int, default=BLOCK_DEVICES)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="KIND=FILE",
        help="take this database's campaign from an earlier run's JSON instead of running it again",
    )
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    result: dict[str, Any] = {"machine": machine_info(uptime=_uptime()), "targets": TARGETS}
    workdir = Path(tempfile.mkdtemp(prefix="hwctl-scale-", dir=args.workdir))
    campaigns: dict[str, Any] = {}
    for reused in args.reuse:
        kind, path = reused.split("=", 1)
        campaigns[kind] = {**json.loads(Path(path).read_text()), "reused_from": path}
    for kind in [] if args.skip_campaign else args.databases.split(","):
        with database(kind, workdir, args.postgres_url) as url:
            print(f"campaign on {kind}", flush=True)
            campaign = run_campaign(
                url, workdir, arch=args.arch, geometry=args.geometry, block_devices=args.block_devices
            )
            campaign["uptime_after"] = _uptime()
            engine = make_engine(url)
            try:
                campaign["store"] = store_figures(engine, _campaign_run_id(engine), rng)
            finally:
                engine.dispose()
            campaigns[kind] = campaign
            emit(campaign, None)
    result["campaigns"] = campaigns
    if campaigns:
        first = next(iter(campaigns.values()))
        result["devices"] = first["store"]["n_devices"]
        result["pv_s_visa"] = first["jobs"]["program_s"][0]
        result["readout_tcp_s"] = round(statistics.median(first["jobs"]["readback_s"]), 2)
        for kind, campaign in campaigns.items():
            result[f"store_s_{kind}"] = campaign["store"]["store_s"]
        result["series_ms"] = max(c["store"]["series_ms_median"] for c in campaigns.values())
        result["fit_s"] = max(max(c["jobs"]["analyze_s"], default=math.nan) for c in campaigns.values())
        result["campaign_s"] = max(c["campaign_s"] for c in campaigns.values())
        result["campaign_s_by_database"] = {k: c["campaign_s"] for k, c in campaigns.items()}
        result["rss_gb"] = {
            name: max(c["rss_gb"].get(name, 0.0) for c in campaigns.values())
            for name in ("worker", "api", "chip")
        }
    if not args.skip_scaling:
        by_n: dict[str, Any] = {}
        with database("sqlite", workdir, args.postgres_url) as url:
            engine = make_engine(url)
            upgrade(engine)
            sizes = [int(float(n)) for n in args.scaling_sizes.split(",") if n]
            for n in (*sizes, result.get("devices")):
                if n is None:
                    continue
                print(f"scaling at {n} devices", flush=True)
                stages = scaling_point(int(n), engine, rng)
                by_n[str(n)] = {
                    "seconds": {k: round(v, 2) for k, v in stages.items()},
                    "s_per_million": per_million(stages, int(n)),
                }
                emit(by_n[str(n)], None)
                if n == result.get("devices"):
                    result["pv_s_inprocess"] = round(stages["pv_inprocess_s"], 2)
                with engine.begin() as conn:  # keep the file small: drop this size's readouts
                    conn.execute(readouts.delete())
            engine.dispose()
        result["s_per_million_by_n"] = {n: v["s_per_million"] for n, v in by_n.items()}
        result["seconds_by_n"] = {n: v["seconds"] for n, v in by_n.items()}
    result["machine"]["uptime_end"] = _uptime()
    emit(result, args.json)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
