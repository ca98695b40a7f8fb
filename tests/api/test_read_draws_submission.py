"""`schedule.reads_per_point`: 1 to 16 whole reads of the chip at each scheduled time, a
whole number, counted against the readback limit as offsets × reads; anything else is a
422 before anything is queued."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import AUTH, assert_problem, station_body, upload

OFFSETS_S = [25.0, 250.0, 2_500.0]


@pytest.fixture
def ready(client: TestClient, digits_checkpoint: bytes) -> dict[str, Any]:
    client.post("/stations", json=station_body("sim-1", clock_kind="virtual"), headers=AUTH)
    return {"network_id": upload(client, digits_checkpoint).json()["id"], "station": "sim-1"}


def _nothing_queued(client: TestClient) -> None:
    assert client.get("/experiments").json()["total"] == 0
    assert client.get("/jobs").json()["total"] == 0


def test_three_reads_per_point_are_accepted_and_stored_with_the_spec(
    client: TestClient, ready: dict[str, Any]
) -> None:
    body = ready | {"schedule": {"offsets_s": OFFSETS_S, "reads_per_point": 3}}
    response = client.post("/experiments", json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    experiment = client.get(f"/experiments/{response.json()['experiment']['id']}").json()
    assert experiment["spec"]["schedule"] == {"offsets_s": OFFSETS_S, "reads_per_point": 3}
    assert experiment["progress"]["readouts_planned"] == 9
    assert client.get(f"/experiments/{experiment['id']}/accuracy").json() == []  # nothing read yet
    assert_problem(client.get("/experiments/999/accuracy"), 404, "experiment 999")


@pytest.mark.parametrize(
    ("literal", "phrase"),
    [("0", "greater than or equal to 1"), ("17", "less than or equal to 16"), ("-3", "greater than or equal"),
     ("2.5", "valid integer"), ("3.0", "valid integer"), ('"3"', "valid integer"),
     ("true", "true/false is not a value"), ("null", "valid integer"), ("NaN", "valid integer"),
     ("Infinity", "valid integer"), ("1e400", "valid integer")],
)  # fmt: skip
def test_a_reads_per_point_that_is_not_a_whole_number_from_1_to_16_is_422_and_queues_nothing(
    client: TestClient, ready: dict[str, Any], literal: str, phrase: str
) -> None:
    placeholder = 987654321
    body = json.dumps(ready | {"schedule": {"offsets_s": OFFSETS_S, "reads_per_point": placeholder}})
    response = client.post(
        "/experiments", content=body.replace(str(placeholder), literal),
        headers=AUTH | {"Content-Type": "application/json"},
    )  # fmt: skip
    assert_problem(response, 422, "reads_per_point", phrase)
    _nothing_queued(client)


def test_reads_count_against_the_readback_limit_as_offsets_times_reads(
    client: TestClient, ready: dict[str, Any]
) -> None:
    offsets_s = [25.0 + 2 * i for i in range(100)]  # 100 offsets are accepted with one read each
    body = ready | {"schedule": {"offsets_s": offsets_s, "reads_per_point": 11}}
    response = client.post("/experiments", json=body, headers=AUTH)
    assert_problem(response, 422, "100 offsets × 11 reads_per_point = 1100 readbacks", "at most 1000")
    _nothing_queued(client)
