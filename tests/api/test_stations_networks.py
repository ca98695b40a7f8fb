"""Stations and networks: create, list with pagination, get; checkpoints validated on upload."""

from __future__ import annotations

import hashlib
import io
import math

import pytest
from fastapi.testclient import TestClient

from drivers.base import Geometry
from hwctl.store import records
from hwctl.store.engine import make_engine
from tests.api.conftest import AUTH, STATION_GEOMETRY, assert_problem, station_body, upload


def test_created_station_is_listed_and_fetched_by_name(client: TestClient) -> None:
    created = client.post("/stations", json=station_body("bench-1"), headers=AUTH)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/stations/bench-1"
    assert created.json()["geometry"] == STATION_GEOMETRY

    fetched = client.get("/stations/bench-1").json()
    assert fetched == created.json()
    listed = client.get("/stations").json()
    assert listed["total"] == 1 and listed["items"] == [fetched]


def test_a_station_stored_before_todays_checks_is_listed_with_what_they_refuse(
    client: TestClient, db_url: str
) -> None:
    """An older version let `hwctl station add` store an impossible geometry and an infinite pulse
    limit: the listing, the station and the dashboard still answer, and say what is wrong."""
    client.post("/stations", json=station_body("bench-1"), headers=AUTH)
    engine = make_engine(db_url)
    with engine.begin() as conn:
        records.add_station(
            conn, "old-bench", resource="sim://", chip_serial="SIM-1", geometry=Geometry(1, -3, 8),
            amplitude_limit_ua=math.inf,
        )  # fmt: skip
    engine.dispose()

    listed = client.get("/stations")
    assert listed.status_code == 200, listed.text
    good, old = listed.json()["items"]
    assert good["refused"] == []
    assert old["geometry"] == {"tiles": 1, "rows": -3, "cols": 8} and old["amplitude_limit_ua"] is None
    assert [line.split(":")[0] for line in old["refused"]] == ["geometry.rows", "amplitude_limit_ua"]
    assert client.get("/stations/old-bench").json() == old
    assert client.get("/dashboard").status_code == 200


def test_duplicate_station_name_is_a_conflict(client: TestClient) -> None:
    client.post("/stations", json=station_body("bench-1"), headers=AUTH)
    assert_problem(client.post("/stations", json=station_body("bench-1"), headers=AUTH), 409, "bench-1")


def test_pagination_reports_total_beyond_the_page(client: TestClient) -> None:
    for i in range(5):
        client.post("/stations", json=station_body(f"s{i}"), headers=AUTH)
    page = client.get("/stations", params={"limit": 2, "offset": 3}).json()
    assert page["total"] == 5
    assert [s["name"] for s in page["items"]] == ["s3", "s4"]
    assert (page["limit"], page["offset"]) == (2, 3)


def test_uploaded_checkpoint_records_hash_architecture_and_metadata(
    client: TestClient, digits_checkpoint: bytes
) -> None:
    response = upload(client, digits_checkpoint, "my-digits.pt")
    assert response.status_code == 201, response.text
    network = response.json()
    assert network["sha256"] == hashlib.sha256(digits_checkpoint).hexdigest()
    assert network["architecture"] == "digits-resnet"
    assert network["name"] == "my-digits"
    assert network["size_bytes"] == len(digits_checkpoint)
    assert network["metadata"] == {"recipe": "untrained", "epochs": 0}
    assert client.get(f"/networks/{network['id']}").json() == network
    assert client.get("/networks").json()["total"] == 1


def test_unknown_network_is_404_with_its_id(client: TestClient) -> None:
    assert_problem(client.get("/networks/999"), 404, "network 999")


@pytest.mark.parametrize("architecture", ["resnet32", "no-such-net"])
def test_an_architecture_the_checkpoint_contradicts_is_422_and_nothing_stored(
    client: TestClient, digits_checkpoint: bytes, architecture: str
) -> None:
    """The checkpoint names its own architecture: a different one in the form was dropped
    without a word (201, stored as the checkpoint's)."""
    files = {"file": ("digits.pt", io.BytesIO(digits_checkpoint), "application/octet-stream")}
    response = client.post("/networks", files=files, data={"architecture": architecture}, headers=AUTH)
    assert_problem(response, 422, "digits-resnet", architecture)
    assert client.get("/networks").json()["total"] == 0
