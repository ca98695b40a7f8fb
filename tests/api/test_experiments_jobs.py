"""Submitting experiments enqueues a program job; jobs can be listed, cancelled and followed."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from hwctl import queue
from hwctl.store import networks
from hwctl.store.engine import make_engine
from tests.api.conftest import AUTH, api_settings, assert_problem, station_body, upload


@pytest.fixture
def ready(client: TestClient, digits_checkpoint: bytes) -> dict[str, Any]:
    """A registered station and an uploaded network: what a submission refers to."""
    client.post("/stations", json=station_body("bench-1"), headers=AUTH)
    network = upload(client, digits_checkpoint).json()
    return {"network_id": network["id"], "station": "bench-1"}


def submit(client: TestClient, spec: dict[str, Any], **headers: str) -> Any:
    return client.post("/experiments", json=spec, headers=AUTH | headers)


def test_submission_is_accepted_with_its_program_job(client: TestClient, ready: dict[str, Any]) -> None:
    response = submit(client, ready | {"schedule": {"offsets_s": [25, 250, 2500]}})
    assert response.status_code == 202, response.text
    accepted = response.json()
    experiment, job = accepted["experiment"], accepted["program_job"]
    assert response.headers["location"] == f"/experiments/{experiment['id']}"
    assert job["kind"] == "program" and job["status"] == "queued"
    assert job["payload"] == {"experiment_id": experiment["id"]}
    assert experiment["spec"]["schedule"]["offsets_s"] == [25.0, 250.0, 2500.0]

    detail = client.get(response.headers["location"]).json()
    assert detail["progress"] == {
        "jobs_total": 1, "jobs_done": 0, "readouts_done": 0, "readouts_planned": 3, "evaluations_done": 0,
    }
    assert client.get("/experiments", params={"station": "bench-1"}).json()["total"] == 1


def test_a_first_submission_builds_its_network_before_the_shared_write_transaction(
    client: TestClient, ready: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading and building a checkpoint (ResNet-34: 87 MB, 0.2–0.6 s) must not hold the one
    writer that grouped submissions share: it happens on a read connection first."""
    monkeypatch.setattr(networks, "_ANALOG_LAYERS", {})  # as if this API process had never seen it
    loaded_in: list[str] = []
    load_network = networks.load_network

    def spy(conn: Any, network_id: int) -> Any:
        loaded_in.append(threading.current_thread().name)
        return load_network(conn, network_id)

    monkeypatch.setattr(networks, "load_network", spy)
    assert submit(client, ready).status_code == 202
    assert loaded_in, "the submission never checked the network's layers"
    assert "hwctl-group-commit" not in loaded_in


def test_resubmission_with_the_same_idempotency_key_returns_the_same_experiment(
    client: TestClient, ready: dict[str, Any]
) -> None:
    first = submit(client, ready, **{"Idempotency-Key": "run-42"}).json()
    again = submit(client, ready, **{"Idempotency-Key": "run-42"}).json()
    assert again == first
    assert client.get("/experiments").json()["total"] == 1


def test_an_idempotency_key_reused_with_another_body_is_422_and_changes_nothing(
    client: TestClient, ready: dict[str, Any]
) -> None:
    """Answered with the first experiment, the second body's settings were silently dropped."""
    first = submit(client, ready, **{"Idempotency-Key": "run-43"}).json()
    other = ready | {"schedule": {"offsets_s": [25, 250]}}
    assert_problem(submit(client, other, **{"Idempotency-Key": "run-43"}), 422, "Idempotency-Key", "another")
    stored = client.get(f"/experiments/{first['experiment']['id']}").json()
    assert stored["spec"] == first["experiment"]["spec"]
    assert client.get("/experiments").json()["total"] == 1


def test_unknown_station_is_422_and_lists_the_known_ones(client: TestClient, ready: dict[str, Any]) -> None:
    assert_problem(submit(client, ready | {"station": "nowhere"}), 422, "'nowhere'", "bench-1")
    assert client.get("/jobs").json()["total"] == 0


def test_unknown_network_is_422_even_when_the_experiment_is_named(
    client: TestClient, ready: dict[str, Any]
) -> None:
    response = submit(client, ready | {"network_id": 999, "name": "named"})
    assert_problem(response, 422, "network 999")


@pytest.mark.parametrize(("network_id", "bound"), [(-5, "greater than or equal to 1"), (2**40, "less than")])
def test_network_id_outside_database_ids_is_422_naming_the_field(
    client: TestClient, ready: dict[str, Any], network_id: int, bound: str
) -> None:
    response = submit(client, ready | {"network_id": network_id, "name": "named"})
    assert_problem(response, 422, "network_id", bound)


def test_a_boolean_given_as_a_number_is_422_naming_the_field(
    client: TestClient, ready: dict[str, Any]
) -> None:
    response = submit(client, ready | {"schedule": {"offsets_s": [25, True]}})
    assert_problem(response, 422, "offsets_s: true/false is not a value of this field")
    assert client.get("/experiments").json()["total"] == 0


def test_negative_schedule_offset_is_422_naming_the_field(client: TestClient, ready: dict[str, Any]) -> None:
    response = submit(client, ready | {"schedule": {"offsets_s": [25, -5]}})
    assert_problem(response, 422, "schedule.offsets_s", "positive")


def test_a_program_seed_is_refused_since_programming_has_none(
    client: TestClient, ready: dict[str, Any]
) -> None:
    assert_problem(submit(client, ready | {"program": {"seed": 7}}), 422, "program.seed", "Extra inputs")
    assert client.get("/jobs").json()["total"] == 0


def test_jobs_filter_by_status_and_station(client: TestClient, ready: dict[str, Any]) -> None:
    submit(client, ready)
    client.post("/stations", json=station_body("bench-2"), headers=AUTH)
    submit(client, ready | {"station": "bench-2"})
    assert client.get("/jobs", params={"status": "queued", "station": "bench-1"}).json()["total"] == 1
    assert client.get("/jobs", params={"status": "queued"}).json()["total"] == 2
    assert client.get("/jobs", params={"status": "running"}).json()["total"] == 0
    assert client.get("/jobs", params={"station": "other"}).json()["total"] == 0
    assert_problem(client.get("/jobs", params={"status": "sleeping"}), 422, "status")


def test_queued_job_cancels_at_once_and_only_once(client: TestClient, ready: dict[str, Any]) -> None:
    job_id = submit(client, ready).json()["program_job"]["id"]
    cancelled = client.post(f"/jobs/{job_id}/cancel", headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert_problem(client.post(f"/jobs/{job_id}/cancel", headers=AUTH), 409, "already cancelled")
    assert_problem(client.post("/jobs/999/cancel", headers=AUTH), 404, "job 999")


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    parsed = []
    for block in text.strip().split("\n\n"):
        if block.startswith(":"):
            continue  # a comment (keep-alive)
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        parsed.append((fields["event"], json.loads(fields["data"])))
    return parsed


def test_job_events_stream_progress_until_the_job_ends(
    client: TestClient, ready: dict[str, Any], db_url: str
) -> None:
    job = submit(client, ready).json()["program_job"]
    engine = make_engine(db_url)
    claimed = queue.claim(engine, job["station_id"], now_s=10.0)
    assert claimed is not None and claimed.id == job["id"]

    # What a worker does on its own thread while the client listens: half-way, then done
    # (1.5 s apart: the stream polls far more often, even on a loaded machine).
    timers = [
        threading.Timer(0.2, lambda: queue.heartbeat(engine, job["id"], 11, progress=0.5, message="1 of 2")),
        threading.Timer(1.7, lambda: queue.complete(engine, job["id"], 12.0, {"devices": 10})),
    ]
    for timer in timers:
        timer.start()
    with client.stream("GET", f"/jobs/{job['id']}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response.read().decode())
    for timer in timers:
        timer.join()
    engine.dispose()
    names = [name for name, _ in events]
    assert names == ["progress", "progress", "end"]
    assert [data["progress"] for _, data in events] == [0.0, 0.5, 1.0]
    assert events[1][1]["progress_message"] == "1 of 2"
    assert events[2][1]["status"] == "succeeded" and events[2][1]["result"] == {"devices": 10}


def test_a_silent_job_stream_sends_keep_alives_until_the_job_ends(
    db_url: str, digits_checkpoint: bytes
) -> None:
    with TestClient(create_app(api_settings(db_url, sse_keepalive_s=0.1))) as client:
        client.post("/stations", json=station_body("bench-1"), headers=AUTH)
        network_id = upload(client, digits_checkpoint).json()["id"]
        job = submit(client, {"network_id": network_id, "station": "bench-1"}).json()["program_job"]
        engine = make_engine(db_url)
        assert queue.claim(engine, job["station_id"], now_s=10.0) is not None
        done = threading.Timer(0.8, lambda: queue.complete(engine, job["id"], 12.0))
        done.start()
        with client.stream("GET", f"/jobs/{job['id']}/events") as response:
            text = response.read().decode()
        done.join()
        engine.dispose()
    blocks = text.strip().split("\n\n")
    assert blocks[0].startswith("event: progress") and blocks[-1].startswith("event: end")
    assert blocks[1:-1] and all(block == ": keep-alive" for block in blocks[1:-1])
    assert len(blocks[1:-1]) >= 4  # 0.8 s of silence, one comment per 0.1 s at most


def test_a_job_that_resumed_and_succeeded_carries_no_stale_error(
    client: TestClient, ready: dict[str, Any], db_url: str
) -> None:
    station_id = client.get("/stations/bench-1").json()["id"]
    engine = make_engine(db_url)
    job_id = queue.enqueue(engine, kind="readback", station_id=station_id, run_at_s=0.0, window_s=3600.0)
    assert queue.claim(engine, station_id, now_s=10.0) is not None
    queue.recover_on_start(engine, station_id, stale_after_s=1.0, now_s=100.0)  # its worker had died
    resumed = client.get(f"/jobs/{job_id}").json()
    assert (resumed["status"], resumed["error"]) == ("queued", "worker stopped")
    assert queue.claim(engine, station_id, now_s=101.0) is not None
    queue.complete(engine, job_id, 102.0)
    engine.dispose()
    with client.stream("GET", f"/jobs/{job_id}/events") as response:
        [(name, data)] = _events(response.read().decode())
    assert (name, data["status"], data["error"]) == ("end", "succeeded", None)


def test_events_of_an_unknown_job_are_404(client: TestClient) -> None:
    assert_problem(client.get("/jobs/12345/events"), 404, "job 12345")


def test_concurrent_submissions_all_succeed_on_sqlite(client: TestClient, ready: dict[str, Any]) -> None:
    """Writers that read before writing must queue, not fail with "database is locked"."""
    statuses: list[int] = []
    for i in range(32):
        client.post("/stations", json=station_body(f"s{i}"), headers=AUTH)

    def submit_four(first: int) -> None:
        for i in range(first, first + 4):
            statuses.append(submit(client, ready | {"station": f"s{i}"}).status_code)

    threads = [threading.Thread(target=submit_four, args=(4 * k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [202] * 32
    assert client.get("/jobs", params={"kind": "program"}).json()["total"] == 32


def test_concurrent_submissions_sharing_a_key_store_one_experiment_beside_failing_ones(
    client: TestClient, ready: dict[str, Any]
) -> None:
    """Submissions committed together: same key → one job; an invalid one fails alone."""
    answers: list[Any] = []

    def submit_both() -> None:
        answers.append(submit(client, ready, **{"Idempotency-Key": "shared"}))
        answers.append(submit(client, ready | {"station": "nowhere"}))

    threads = [threading.Thread(target=submit_both) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted = [a.json() for a in answers if a.status_code == 202]
    assert sorted(a.status_code for a in answers) == [202] * 6 + [422] * 6
    assert len({a["program_job"]["id"] for a in accepted}) == 1
    assert client.get("/experiments").json()["total"] == 1
