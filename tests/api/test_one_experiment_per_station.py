"""A station runs one experiment at a time (every mapping starts at tile 0, so a second one
would overwrite the first's devices); cancelling frees it. The evaluation data set follows
the network unless given, and must fit it."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from api.routers import experiments as experiments_router
from hwctl import queue
from hwctl.nn.models import build_model, save_checkpoint
from hwctl.store import records
from hwctl.store.engine import make_engine
from hwctl.store.schema import experiments, jobs
from tests.api.conftest import AUTH, CIFAR_STATION_GEOMETRY, assert_problem, station_body, upload


@pytest.fixture
def ready(client: TestClient, digits_checkpoint: bytes) -> dict[str, Any]:
    client.post("/stations", json=station_body("sim"), headers=AUTH)
    return {"network_id": upload(client, digits_checkpoint).json()["id"], "station": "sim"}


def submit(client: TestClient, spec: dict[str, Any]) -> Any:
    return client.post("/experiments", json=spec, headers=AUTH)


def test_second_experiment_on_a_busy_station_is_409_naming_the_first(
    client: TestClient, ready: dict[str, Any]
) -> None:
    first = submit(client, ready).json()["experiment"]["id"]
    assert_problem(submit(client, ready), 409, "station 'sim' is busy", f"experiment {first}", "(created",
                   f"/experiments/{first}/cancel")  # fmt: skip
    assert client.get("/experiments").json()["total"] == 1


def test_busy_message_says_which_readback_is_next(
    client: TestClient, ready: dict[str, Any], db_url: str
) -> None:
    accepted = submit(client, ready | {"schedule": {"offsets_s": [25, 7200]}}).json()
    experiment_id, station_id = accepted["experiment"]["id"], accepted["program_job"]["station_id"]
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(update(experiments).where(experiments.c.id == experiment_id).values(status="reading"))
    queue.enqueue(engine, kind="readback", station_id=station_id, experiment_id=experiment_id,
                  run_at_s=7300.0, payload={"experiment_id": experiment_id, "offset_s": 7200.0})  # fmt: skip
    engine.dispose()
    assert_problem(submit(client, ready), 409, "(reading, next readback at 2 h after programming)")


def test_a_finished_experiment_frees_the_station(
    client: TestClient, ready: dict[str, Any], db_url: str
) -> None:
    first = submit(client, ready).json()["experiment"]["id"]
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(update(experiments).where(experiments.c.id == first).values(status="done"))
    engine.dispose()
    assert submit(client, ready).status_code == 202


def test_concurrent_submissions_to_one_station_accept_exactly_one(
    client: TestClient, ready: dict[str, Any]
) -> None:
    statuses: list[int] = []
    gate = threading.Barrier(12)

    def submit_one() -> None:
        gate.wait()
        statuses.append(submit(client, ready).status_code)

    threads = [threading.Thread(target=submit_one) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [202] + [409] * 11
    assert client.get("/experiments", params={"station": "sim"}).json()["total"] == 1


def test_a_check_that_loses_a_race_is_caught_by_the_store_and_answered_409_busy(
    client: TestClient, ready: dict[str, Any], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if another API process stored its experiment between this one's check and insert:
    the store's unique index refuses the insert, and the client sees the usual busy 409."""
    station_id = client.get("/stations/sim").json()["id"]
    engine = make_engine(db_url)
    with engine.begin() as conn:
        rival = records.add_experiment(conn, "rival", network_id=ready["network_id"], station_id=station_id,
                                       settings={})  # fmt: skip
    engine.dispose()
    checks: list[int] = []
    real_check = experiments_router._refuse_if_busy

    def check_missing_the_rival_once(db: Any, checked_station_id: int) -> None:
        checks.append(checked_station_id)
        if len(checks) > 1:
            real_check(db, checked_station_id)

    monkeypatch.setattr(experiments_router, "_refuse_if_busy", check_missing_the_rival_once)
    assert_problem(submit(client, ready), 409, "station 'sim' is busy", f"experiment {rival}")
    assert checks == [station_id, station_id]  # the submission's own check passed; the index refused it
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(experiments)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == 0
    engine.dispose()


def test_cancelling_frees_the_station_and_stops_every_job(
    client: TestClient, ready: dict[str, Any], db_url: str
) -> None:
    accepted = submit(client, ready).json()
    experiment_id, program = accepted["experiment"]["id"], accepted["program_job"]
    engine = make_engine(db_url)
    assert queue.claim(engine, program["station_id"], now_s=1.0) is not None  # the worker is programming
    queue.enqueue(engine, kind="readback", station_id=program["station_id"], experiment_id=experiment_id,
                  run_at_s=100.0, payload={"experiment_id": experiment_id})  # fmt: skip
    engine.dispose()

    cancelled = client.post(f"/experiments/{experiment_id}/cancel", headers=AUTH)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    job_rows = client.get("/jobs", params={"experiment_id": experiment_id}).json()["items"]
    assert {(j["kind"], j["status"], j["cancel_requested"]) for j in job_rows} == {
        ("program", "running", True), ("readback", "cancelled", False),
    }
    assert submit(client, ready).status_code == 202
    again = client.post(f"/experiments/{experiment_id}/cancel", headers=AUTH)
    assert_problem(again, 409, "already cancelled")
    assert_problem(client.post("/experiments/999/cancel", headers=AUTH), 404, "experiment 999")


def test_cancelling_needs_the_write_key(client: TestClient, ready: dict[str, Any]) -> None:
    experiment_id = submit(client, ready).json()["experiment"]["id"]
    assert client.post(f"/experiments/{experiment_id}/cancel").status_code == 401


@pytest.fixture(scope="module")
def resnet20_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "resnet20.pt"
    save_checkpoint(path, "resnet20", build_model("resnet20"), {})
    return path.read_bytes()


@pytest.mark.parametrize("architecture, expected", [("digits-resnet", "digits"), ("resnet20", "cifar10")])
def test_a_missing_dataset_is_the_architectures_own_and_stored_resolved(
    client: TestClient, ready: dict[str, Any], digits_checkpoint: bytes, resnet20_checkpoint: bytes,
    architecture: str, expected: str,
) -> None:
    checkpoint = {"digits-resnet": digits_checkpoint, "resnet20": resnet20_checkpoint}[architecture]
    network_id = upload(client, checkpoint, f"{architecture}.pt").json()["id"]
    client.post("/stations", json=station_body("cifar-sized", geometry=CIFAR_STATION_GEOMETRY), headers=AUTH)
    accepted = submit(client, ready | {"network_id": network_id, "station": "cifar-sized"}).json()
    assert accepted["experiment"]["spec"]["evaluation"]["dataset"] == expected
    stored = client.get(f"/experiments/{accepted['experiment']['id']}").json()
    assert stored["spec"]["evaluation"]["dataset"] == expected


def test_a_dataset_that_does_not_fit_the_network_is_422(
    client: TestClient, ready: dict[str, Any], resnet20_checkpoint: bytes
) -> None:
    network_id = upload(client, resnet20_checkpoint, "resnet20.pt").json()["id"]
    response = submit(client, ready | {"network_id": network_id, "evaluation": {"dataset": "digits"}})
    assert_problem(response, 422, "'digits' (1×8×8 images)", "resnet20", "3×32×32 cifar10", "omit")
    assert client.get("/experiments").json()["total"] == 0


@pytest.mark.parametrize(("same_body", "status"), [(True, 202), (False, 422)])
def test_an_idempotency_key_that_loses_a_race_answers_the_winner_only_for_the_same_body(
    client: TestClient, ready: dict[str, Any], monkeypatch: pytest.MonkeyPatch, same_body: bool, status: int
) -> None:
    """As if another API process stored the key's experiment between this one's checks and
    insert: the store's unique index refuses the insert, and the winner is the answer only if
    this body is the one it was stored for."""
    key = {"Idempotency-Key": "race-1"}
    first = client.post("/experiments", json=ready, headers=AUTH | key).json()["experiment"]
    body = ready if same_body else ready | {"g_max_us": 20.0}
    lookups: list[str] = []
    real_lookup = experiments_router.store_experiments.job_by_key

    def missing_the_rival_once(db: Any, idempotency_key: str) -> Any:
        lookups.append(idempotency_key)
        return None if len(lookups) == 1 else real_lookup(db, idempotency_key)

    monkeypatch.setattr(experiments_router.store_experiments, "job_by_key", missing_the_rival_once)
    monkeypatch.setattr(experiments_router, "_refuse_if_busy", lambda db, station_id: None)
    response = client.post("/experiments", json=body, headers=AUTH | key)
    assert len(lookups) == 2  # the submission's own lookup missed; the collision's found the winner
    if same_body:
        assert response.status_code == 202 and response.json()["experiment"]["id"] == first["id"]
    else:
        assert_problem(response, 422, "Idempotency-Key 'race-1' was used for experiment", "another body")
    assert client.get("/experiments").json()["total"] == 1
