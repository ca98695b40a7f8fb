"""End to end over real sockets: HTTP client → uvicorn → SQLite → station worker → TCP → simulated chip.

A client registers a station (a simulated chip on a virtual clock, served on a localhost
port), uploads a checkpoint, submits an experiment, follows the program job's event
stream, and reads back readouts, accuracies and a .npy vector, all through the API.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from api.app import create_app
from api.server import BackgroundServer
from hwctl.embedded_chip import SimChipOptions, start_embedded_chip
from hwctl.store.engine import make_engine
from hwctl.worker import Worker, WorkerOptions
from tests.api.conftest import AUTH, api_settings, migrated_sqlite_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
OFFSETS_S = [25.0, 2500.0]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[httpx.Client, Worker]]:
    """A live API, a chip on a real TCP port, and the worker that owns it."""
    url = migrated_sqlite_url(tmp_path)
    chip = start_embedded_chip(SimChipOptions(virtual=True, seed=5))
    worker_engine = make_engine(url)
    worker = Worker(worker_engine, "e2e", WorkerOptions(poll_s=0.05))
    with BackgroundServer(create_app(api_settings(url))) as server, httpx.Client(
        base_url=server.url, headers=AUTH, timeout=30.0
    ) as client:
        client.post("/stations", json={
            "name": "e2e", "resource": chip.resource, "chip_serial": "SIM-0001", "clock_kind": "virtual",
            "geometry": {"tiles": 16, "rows": 512, "cols": 256},
        }).raise_for_status()
        worker.start()
        try:
            yield client, worker
        finally:
            worker.stop()
            worker_engine.dispose()
            chip.stop()


def _events(client: httpx.Client, job_id: int) -> list[tuple[str, dict[str, Any]]]:
    events, name = [], ""
    with client.stream("GET", f"/jobs/{job_id}/events") as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def _wait_for_results(client: httpx.Client, experiment_id: int, worker: Worker) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert worker.error is None, worker.error
        detail = client.get(f"/experiments/{experiment_id}").json()
        progress = detail["progress"]
        if progress["jobs_total"] and progress["jobs_done"] == progress["jobs_total"]:
            return dict(detail)
        time.sleep(0.2)
    raise AssertionError(f"experiment {experiment_id} did not finish: {detail['progress']}")


def test_experiment_submitted_over_http_is_programmed_read_back_and_evaluated(
    live: tuple[httpx.Client, Worker], digits_checkpoint: bytes
) -> None:
    client, worker = live
    files = {"file": ("digits.pt", io.BytesIO(digits_checkpoint), "application/octet-stream")}
    network = client.post("/networks", files=files).raise_for_status().json()
    spec = {
        "network_id": network["id"], "station": "e2e", "schedule": {"offsets_s": OFFSETS_S},
        "evaluation": {"dataset": "digits", "methods": ["none", "gdc"], "n_images": 100,
                       "calibration_images": 100},
    }
    accepted = client.post("/experiments", json=spec)
    assert accepted.status_code == 202, accepted.text
    experiment_id = accepted.json()["experiment"]["id"]

    events = _events(client, accepted.json()["program_job"]["id"])
    assert events[-1][0] == "end" and events[-1][1]["status"] == "succeeded", events[-1]

    detail = _wait_for_results(client, experiment_id, worker)
    jobs = client.get("/jobs", params={"experiment_id": experiment_id}).json()["items"]
    assert {j["status"] for j in jobs} == {"succeeded"}, [(j["kind"], j["status"], j["error"]) for j in jobs]
    assert [r["offset_s"] for r in detail["readouts"]] == OFFSETS_S
    methods = {(e["offset_s"], e["method"]) for e in detail["evaluations"]}
    assert methods == {(t, m) for t in OFFSETS_S for m in ("none", "gdc")}
    assert all(0.0 <= e["accuracy"] <= 100.0 for e in detail["evaluations"])

    readout = detail["readouts"][-1]
    vector = client.get(f"/readouts/{readout['id']}/vector")
    g_us = np.load(io.BytesIO(vector.content), allow_pickle=False)
    assert g_us.shape == (readout["n_devices"],)
    assert 0.0 < float(np.median(g_us[g_us > 1.0])) < 30.0  # programmed conductances, µS
