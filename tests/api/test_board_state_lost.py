"""An experiment whose board lost its state waits for the operator, who resumes it,
re-programs it or cancels it through the API."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.app import create_app
from hwctl import queue
from hwctl.embedded_chip import SimChipOptions, start_embedded_chip
from hwctl.store.engine import make_engine
from hwctl.store.schema import experiments
from hwctl.worker import Worker, WorkerOptions
from tests.api.conftest import AUTH, api_settings, assert_problem, station_body, upload
from tests.service.conftest import SMALL_CHIP, create_campaign
from tests.service.test_campaign import run_until_idle

EVIDENCE = "board state lost: serial SIM-1 matches; clock went back from 9000.0 s to 12.0 s"


@pytest.fixture
def lost(client: TestClient, digits_checkpoint: bytes, db_url: str) -> dict[str, Any]:
    """An experiment reading back (one readback queued, one running) whose board came back blank."""
    client.post("/stations", json=station_body("bench-1"), headers=AUTH)
    network_id = upload(client, digits_checkpoint).json()["id"]
    spec = {"network_id": network_id, "station": "bench-1", "schedule": {"offsets_s": [25, 2500]}}
    accepted = client.post("/experiments", json=spec, headers=AUTH).json()
    experiment_id, station_id = accepted["experiment"]["id"], accepted["program_job"]["station_id"]
    engine = make_engine(db_url)
    queue.cancel(engine, accepted["program_job"]["id"])  # stands for a finished programming
    for offset_s in (25.0, 2500.0):
        payload = {"experiment_id": experiment_id, "offset_s": offset_s}
        queue.enqueue(engine, kind="readback", station_id=station_id, experiment_id=experiment_id,
                      run_at_s=offset_s, payload=payload)  # fmt: skip
    assert queue.claim(engine, station_id, now_s=30.0) is not None
    with engine.begin() as conn:
        conn.execute(update(experiments).where(experiments.c.id == experiment_id)
                     .values(status="board_state_lost", status_reason=EVIDENCE))  # fmt: skip
    engine.dispose()
    return {"id": experiment_id}


def _readbacks(client: TestClient, experiment_id: int) -> list[tuple[str, bool]]:
    found = client.get("/jobs", params={"experiment_id": experiment_id, "kind": "readback"}).json()["items"]
    return [(job["status"], job["cancel_requested"]) for job in found]


def test_the_evidence_is_on_the_experiment(client: TestClient, lost: dict[str, Any]) -> None:
    shown = client.get(f"/experiments/{lost['id']}").json()
    assert (shown["status"], shown["status_reason"]) == ("board_state_lost", EVIDENCE)


def test_resuming_reads_on_and_keeps_the_evidence(client: TestClient, lost: dict[str, Any]) -> None:
    response = client.post(f"/experiments/{lost['id']}/resume", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "reading"
    assert response.json()["status_reason"] == f"resumed by an operator after: {EVIDENCE}"
    assert _readbacks(client, lost["id"]) == [("running", False), ("queued", False)]
    assert_problem(client.post(f"/experiments/{lost['id']}/resume", headers=AUTH), 409, "is reading")


def test_reprogramming_stops_the_old_schedule_and_queues_a_program_job(
    client: TestClient, lost: dict[str, Any]
) -> None:
    response = client.post(f"/experiments/{lost['id']}/reprogram", headers=AUTH)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert (accepted["experiment"]["status"], accepted["program_job"]["status"]) == ("created", "queued")
    assert accepted["experiment"]["status_reason"] == f"re-programming after: {EVIDENCE}"
    assert _readbacks(client, lost["id"]) == [("running", True), ("cancelled", False)]
    assert_problem(client.post(f"/experiments/{lost['id']}/reprogram", headers=AUTH), 409, "is created")


def test_cancelling_frees_the_station(client: TestClient, lost: dict[str, Any]) -> None:
    assert client.post(f"/experiments/{lost['id']}/cancel", headers=AUTH).json()["status"] == "cancelled"
    refused = client.post(f"/experiments/{lost['id']}/resume", headers=AUTH)
    assert_problem(refused, 409, "is cancelled", "board lost its state")


def test_only_the_write_key_may_decide(client: TestClient, lost: dict[str, Any]) -> None:
    for action in ("resume", "reprogram"):
        assert client.post(f"/experiments/{lost['id']}/{action}").status_code == 401
    assert_problem(client.post("/experiments/999/resume", headers=AUTH), 404, "experiment 999")


def test_a_reprogrammed_experiment_runs_a_new_programming_and_its_schedule_to_done(db_url: str) -> None:
    """Through the station worker on a simulated chip: the new run is programmed and read
    back on its own schedule; the first run's readouts stay."""
    engine = make_engine(db_url)
    chip = start_embedded_chip(SimChipOptions(virtual=True, geometry=SMALL_CHIP, seed=3))
    options = WorkerOptions(read_block_devices=50_000)
    try:
        campaign = create_campaign(engine, chip.resource, points=2)
        run_until_idle(Worker(engine, campaign.station, options), engine)
        with engine.begin() as conn:  # as the worker's continuity check would on a blank board
            conn.execute(update(experiments).where(experiments.c.id == campaign.experiment_id)
                         .values(status="board_state_lost", status_reason=EVIDENCE))  # fmt: skip
        with TestClient(create_app(api_settings(db_url))) as client:
            again = client.post(f"/experiments/{campaign.experiment_id}/reprogram", headers=AUTH)
            assert again.status_code == 202, again.text
            run_until_idle(Worker(engine, campaign.station, options), engine)
            detail = client.get(f"/experiments/{campaign.experiment_id}").json()
    finally:
        chip.stop()
        engine.dispose()
    assert detail["status"] == "done"
    runs = sorted({r["run_id"] for r in detail["readouts"]})
    assert len(runs) == 2
    assert [[r["offset_s"] for r in detail["readouts"] if r["run_id"] == run] for run in runs] == [
        campaign.offsets_s, campaign.offsets_s,
    ]
