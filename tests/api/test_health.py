"""GET /health tells a probe whether the database answers, each station's worker is alive
and its board's link is up: 200 when all is, 503 naming each thing that is not."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update

from hwctl.store import station_link
from hwctl.store.engine import make_engine
from hwctl.store.schema import stations, utc_now
from tests.api.conftest import AUTH, assert_problem, station_body


def _register(client: TestClient, *names: str) -> dict[str, int]:
    created = (client.post("/stations", json=station_body(name), headers=AUTH).json() for name in names)
    return {station["name"]: station["id"] for station in created}


def test_a_service_with_live_workers_and_links_is_healthy(client: TestClient, db_url: str) -> None:
    ids = _register(client, "bench-1", "bench-2")
    engine = make_engine(db_url)
    with engine.begin() as conn:
        for station_id in ids.values():
            station_link.link_up(conn, station_id)
    engine.dispose()
    response = client.get("/health")  # no API key: probes have none
    assert response.status_code == 200, response.text
    health = response.json()
    assert (health["status"], health["database"], health["reasons"]) == ("ok", "ok", [])
    assert [(s["name"], s["healthy"], s["link"]) for s in health["stations"]] == [
        ("bench-1", True, "up"), ("bench-2", True, "up"),
    ]


def test_a_station_no_worker_has_opened_is_unknown_not_unhealthy(client: TestClient) -> None:
    _register(client, "bench-1")
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert (health["stations"][0]["link"], health["stations"][0]["worker_heartbeat_at"]) == (None, None)


def test_a_down_link_and_a_silent_worker_are_503_with_each_reason(client: TestClient, db_url: str) -> None:
    ids = _register(client, "bench-1", "bench-2", "bench-3")
    engine = make_engine(db_url)
    with engine.begin() as conn:
        station_link.link_down(conn, ids["bench-1"], since=utc_now() - timedelta(seconds=30), attempts=4)
        station_link.link_up(conn, ids["bench-2"])
        silent_since = utc_now() - timedelta(seconds=600)
        silent = update(stations).where(stations.c.id == ids["bench-2"])
        conn.execute(silent.values(worker_heartbeat_at=silent_since))
        station_link.link_up(conn, ids["bench-3"])
    engine.dispose()
    response = client.get("/health")
    assert response.status_code == 503
    health = response.json()
    assert health["status"] == "unhealthy" and health["database"] == "ok"
    [down, silent] = health["reasons"]
    assert "'bench-1'" in down and "link is down since" in down and "4 attempts" in down
    assert "'bench-2'" in silent and "its worker was last alive 60" in silent
    assert [s["healthy"] for s in health["stations"]] == [False, False, True]

    assert client.get("/health/database").status_code == 200  # the API's own probe: not its stations'
    assert client.get("/health/stations/bench-3").status_code == 200  # a worker's own probe
    one = client.get("/health/stations/bench-1")
    assert one.status_code == 503 and [s["name"] for s in one.json()["stations"]] == ["bench-1"]
    assert_problem(client.get("/health/stations/nowhere"), 404, "station 'nowhere'")
