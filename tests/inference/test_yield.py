"""A fresh-read inference (`at=now`) holds the chip lane block by block: a readback that falls
due meanwhile is read on time, then the inference resumes with the repeats it already read."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from api.app import create_app
from api.server import BackgroundServer
from hwctl.embedded_chip import SimChipOptions, start_embedded_chip
from hwctl.schedule import readout_window_s
from hwctl.store.engine import make_engine
from hwctl.store.schema import jobs
from hwctl.worker import Worker, WorkerOptions
from tests.api.conftest import AUTH, api_settings, migrated_sqlite_url
from tests.inference.conftest import CHIP, digits_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
RATE = 50.0  # board s per wall s
LATE_OFFSET_S = 100.0  # falls due ~1.5 wall s after programming: while the inference reads
REPEATS = 60  # fresh reads of ~48k devices in 2,000-device blocks: ~5 wall s


def test_a_readback_falling_due_during_a_fresh_read_inference_is_read_on_time(tmp_path: Path) -> None:
    url = migrated_sqlite_url(tmp_path)
    chip = start_embedded_chip(SimChipOptions(rate=RATE, geometry=CHIP, seed=7))
    engine = make_engine(url)
    worker = Worker(engine, "yield", WorkerOptions(poll_s=0.05, read_block_devices=2_000))
    try:
        with BackgroundServer(create_app(api_settings(url))) as server, httpx.Client(
            base_url=server.url, headers=AUTH, timeout=30.0
        ) as client:
            geometry = {"tiles": CHIP.tiles, "rows": CHIP.rows, "cols": CHIP.cols}
            client.post("/stations", json={
                "name": "yield", "resource": chip.resource, "chip_serial": "SIM-0001",
                "clock_kind": "accelerated", "geometry": geometry,
            }).raise_for_status()  # fmt: skip
            files = {"file": ("digits.pt", io.BytesIO(digits_checkpoint()), "application/octet-stream")}
            network = client.post("/networks", files=files).raise_for_status().json()
            schedule = {"offsets_s": [25.0, LATE_OFFSET_S]}
            experiment = client.post("/experiments", json={
                "network_id": network["id"], "station": "yield", "schedule": schedule,
                "evaluation": {"enabled": False},
            }).raise_for_status().json()["experiment"]  # fmt: skip
            worker.start()
            deadline = time.monotonic() + 60
            while not client.get(f"/experiments/{experiment['id']}").json()["readouts"]:
                assert worker.error is None and time.monotonic() < deadline, worker.error
                time.sleep(0.02)
            accepted = client.post(f"/experiments/{experiment['id']}/inferences",
                                   json={"dataset_id": 1, "at": "now", "repeats": REPEATS})  # fmt: skip
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job"]["id"]
            while (job := client.get(f"/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
                assert worker.error is None and time.monotonic() < deadline + 60, job
                time.sleep(0.05)
            assert job["status"] == "succeeded", job["error"]
            inference = client.get(accepted.headers["Location"]).json()
            readouts = client.get(f"/experiments/{experiment['id']}").json()["readouts"]
    finally:
        worker.stop()
        chip.stop()
    with engine.connect() as conn:
        readback = conn.execute(
            select(jobs).where(jobs.c.kind == "readback", jobs.c.scheduled_s.is_not(None))
            .order_by(jobs.c.scheduled_s.desc()).limit(1)
        ).one()  # fmt: skip
        infer = conn.execute(select(jobs).where(jobs.c.id == job_id)).one()
    engine.dispose()
    assert readback.status == "succeeded", readback.error
    late_s = readback.result["late_s"]
    assert late_s < readout_window_s(LATE_OFFSET_S) / 2, late_s  # read while the inference was still reading
    assert readback.finished_s < infer.finished_s
    assert infer.attempts >= 2  # it yielded and was claimed again
    fresh = [r["readout_id"] for r in inference["summary"]["readouts"]]
    assert len(fresh) == len(set(fresh)) == REPEATS  # every repeat read once: nothing lost, nothing doubled
    assert len(readouts) == 2 + REPEATS
