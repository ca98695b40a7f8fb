"""The API rides out a PostgreSQL restart: while the server is down a request is a 503
problem that says so (never a 500), and from the moment it is back every request succeeds,
the first one included. Against the real server, stopped and started, and a real uvicorn."""

from __future__ import annotations

import glob
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import make_url

from api.app import create_app
from api.server import BackgroundServer
from hwctl.client import HwctlClient
from hwctl.store.engine import make_engine
from hwctl.store.migrate import upgrade
from tests.api.conftest import API_KEY, AUTH, api_settings, station_body
from tests.store.conftest import POSTGRES_URL, _postgres_admin

CLUSTERS = glob.glob("/etc/postgresql/*")
pytestmark = pytest.mark.skipif(not CLUSTERS, reason="no local PostgreSQL cluster to stop and start")


def _cluster(action: str) -> None:
    version = os.path.basename(CLUSTERS[0])
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


@pytest.fixture
def postgres_db() -> Iterator[str]:
    admin = _postgres_admin()  # skips (fails in CI) without a server
    name = f"hwctl_api_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    admin = _postgres_admin()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def _read_write_probe(http: httpx.Client, new_station: str) -> list[httpx.Response]:
    """A read, a write and the health probe."""
    created = http.post("/stations", json=station_body(new_station))
    return [http.get("/stations"), created, http.get("/health")]


def test_the_first_request_after_a_restart_and_requests_during_an_outage(postgres_db: str) -> None:
    with BackgroundServer(create_app(api_settings(postgres_db))) as server, httpx.Client(
        base_url=server.url, headers=AUTH, timeout=30
    ) as http:
        assert http.post("/stations", json=station_body("bench-1")).status_code == 201
        for _ in range(4):  # fill the pool with connections the restart will kill
            assert http.get("/stations").status_code == 200

        _cluster("restart")  # no request while it is down: the pool still holds dead connections
        first = _read_write_probe(http, "bench-2")
        assert [r.status_code for r in first] == [200, 201, 200], [r.text for r in first]

        _cluster("stop")
        try:
            down = _read_write_probe(http, "never")
        finally:
            _cluster("start")
        for response in down[:2]:
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert "the database is unavailable" in response.json()["detail"]
            assert response.headers["retry-after"]
        assert down[2].status_code == 503 and down[2].json()["database"] == "unavailable"

        after = [
            http.get("/stations"), http.post("/stations", json=station_body("bench-3")),
            http.get("/stations/bench-1"), http.get("/health"), http.get("/jobs"),
        ]  # fmt: skip
        assert [r.status_code for r in after] == [200, 201, 200, 200, 200], [r.text for r in after]
        names = [s["name"] for s in http.get("/stations").json()["items"]]
        assert names == ["bench-1", "bench-2", "bench-3"]

        _cluster("stop")  # the command line's client waits out a short outage
        back = threading.Timer(1.0, _cluster, args=("start",))
        back.start()
        try:
            with HwctlClient(server.url, API_KEY) as client:
                station = client.station("bench-1")
        finally:
            back.join()
        assert station is not None and station["name"] == "bench-1"
