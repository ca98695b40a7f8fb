"""The dashboard: HTML pages over a real finished campaign, checked as HTML and in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, update

from api.app import create_app
from api.dashboard import duration
from api.server import BackgroundServer
from drivers.base import Geometry
from hwctl.embedded_chip import SimChipOptions, start_embedded_chip
from hwctl.report import PLOT_NAMES
from hwctl.store import station_link
from hwctl.store.engine import make_engine
from hwctl.store.records import add_experiment, add_network, add_station
from hwctl.store.schema import evaluations, jobs, readouts
from hwctl.worker import Worker, WorkerOptions
from tests.api.conftest import API_KEY, AUTH, api_settings, migrated_sqlite_url, station_body
from tests.service.conftest import SMALL_CHIP, create_campaign
from tests.service.test_campaign import run_until_idle

METHODS = ("none", "gdc", "adabs")
CHROMIUM_APT = "apt-get update && apt-get install -y chromium"


@dataclass(frozen=True)
class FinishedCampaign:
    url: str
    experiment_id: int
    n_readouts: int


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedCampaign]:
    """A digits network programmed on the simulated chip, read back and evaluated 3 times over 24 h
    (virtual time), by the station worker."""
    url = migrated_sqlite_url(tmp_path_factory.mktemp("dashboard"))
    engine = make_engine(url)
    chip = start_embedded_chip(SimChipOptions(virtual=True, geometry=SMALL_CHIP, seed=3))
    try:
        campaign = create_campaign(engine, chip.resource, points=3, evaluate=True)
        run_until_idle(Worker(engine, campaign.station, WorkerOptions(read_block_devices=50_000)), engine)
    finally:
        chip.stop()
    engine.dispose()
    yield FinishedCampaign(url, campaign.experiment_id, len(campaign.offsets_s))


class _Tables(HTMLParser):
    """The text of every cell of the table with a given id, row by row."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.depth, self.rows = table_id, 0, list[list[str]]()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and (self.depth or ("id", self.table_id) in attrs):
            self.depth += 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth and self.rows and self.rows[-1]:
            self.rows[-1][-1] = " ".join((self.rows[-1][-1] + " " + data).split())


def table_rows(html: str, table_id: str) -> list[list[str]]:
    parser = _Tables(table_id)
    parser.feed(html)
    return parser.rows


def expected_accuracy_rows(url: str) -> list[list[str]]:
    """The accuracy table as the stored evaluations say it must read."""
    engine = make_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(
            select(readouts.c.offset_s, evaluations.c.method, evaluations.c.accuracy, evaluations.c.ci_low,
                   evaluations.c.ci_high)
            .join(readouts, readouts.c.id == evaluations.c.readout_id).order_by(readouts.c.offset_s)
        ).all()  # fmt: skip
    engine.dispose()
    offsets = sorted({r.offset_s for r in stored})
    cell = {(r.offset_s, r.method): f"{r.accuracy:.2f} % [{r.ci_low:.1f}, {r.ci_high:.1f}]" for r in stored}
    return [["Time", "none", "GDC", "AdaBS"]] + [
        [duration(t), *(cell[(t, m)] for m in METHODS)] for t in offsets
    ]


def test_duration_reads_in_the_largest_whole_unit() -> None:
    assert [duration(s) for s in (25.0, 90.0, 5_400.0, 86_400.0)] == ["25 s", "1.5 min", "1.5 h", "1.0 d"]


def test_experiment_page_shows_every_stored_accuracy_by_time_and_method(finished: FinishedCampaign) -> None:
    with TestClient(create_app(api_settings(finished.url))) as client:
        page = client.get(f"/dashboard/experiments/{finished.experiment_id}")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    rows = table_rows(page.text, "accuracy")
    assert len(rows) == 1 + finished.n_readouts
    assert rows == expected_accuracy_rows(finished.url)
    assert re.search(r'<span id="gdc-statistic">both-bitlines</span>,\s+both bit-line currents', page.text)
    for name in PLOT_NAMES:
        assert f'src="/experiments/{finished.experiment_id}/plots/{name}"' in page.text


def test_overview_shows_queues_and_follows_the_running_job_live(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.begin() as conn:
        station_id = add_station(
            conn, "bench-7", resource="sim://virtual", chip_serial="SIM-7", geometry=Geometry(1, 8, 8),
            amplitude_limit_ua=400.0,
        )  # fmt: skip
        network_id = add_network(conn, "digits", architecture="digits-resnet", checkpoint=b"x")
        experiment_id = add_experiment(
            conn, "<b>night run</b>", network_id=network_id, station_id=station_id,
            settings={"network_id": network_id, "station": "bench-7"},
        )  # fmt: skip
        job_ids = [
            conn.execute(insert(jobs).values(
                kind=kind, station_id=station_id, experiment_id=experiment_id, status="queued", run_at_s=at_s,
            ).returning(jobs.c.id)).scalar_one()
            for kind, at_s in (("program", 0.0), ("readback", 3_600.0), ("readback", 7_200.0))
        ]  # fmt: skip
        conn.execute(
            update(jobs).where(jobs.c.id == job_ids[0]).values(status="running", progress=0.4,
                                                                 progress_message="iteration 3")
        )  # fmt: skip
    engine.dispose()
    with TestClient(create_app(api_settings(db_url))) as client:
        html = client.get("/", headers={"X-API-Key": API_KEY}).text
    assert table_rows(html, "stations")[1][:4] == ["bench-7", "sim://virtual", "real", "2"]
    assert f'data-events="/jobs/{job_ids[0]}/events"' in html
    assert '<progress max="1" value="0.4">' in html and "iteration 3" in html
    assert "readback at 1.0 h" in html  # the next due job of the station's queue
    assert "&lt;b&gt;night run&lt;/b&gt;" in html and "<b>night run</b>" not in html


def test_dashboard_is_html_outside_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/dashboard")]
    assert client.get("/dashboard/experiments/999").status_code == 404


def test_dashboard_needs_a_key_when_reads_do(db_url: str) -> None:
    with TestClient(create_app(api_settings(db_url, api_read_requires_key=True))) as client:
        assert client.get("/dashboard").status_code == 401
        assert client.get("/dashboard", headers={"X-API-Key": API_KEY}).status_code == 200


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        message = f"headless Chromium is not installed (Debian: {CHROMIUM_APT})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _headless(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1280,900", "--virtual-time-budget=5000", *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"chromium exited with {done.returncode}: {done.stderr[-3000:]}"
    return done


def watching(app: Any, path_suffix: str, seen: threading.Event) -> Any:
    """The ASGI app, setting `seen` when a request for a path ending in `path_suffix` arrives."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith(path_suffix):
            seen.set()
        await app(scope, receive, send)

    return asgi


def test_running_job_progress_updates_live_in_headless_chromium(db_url: str, tmp_path: Path) -> None:
    chromium = _chromium()
    engine = make_engine(db_url)
    with engine.begin() as conn:
        station_id = add_station(
            conn, "bench-live", resource="sim://virtual", chip_serial="SIM-8", geometry=Geometry(1, 8, 8),
            amplitude_limit_ua=400.0,
        )  # fmt: skip
        job_id = conn.execute(insert(jobs).values(
            kind="readback", station_id=station_id, status="running", run_at_s=0.0, progress=0.1,
            progress_message="read 1/10 blocks",
        ).returning(jobs.c.id)).scalar_one()  # fmt: skip
    subscribed = threading.Event()

    def finish_job_once_the_page_listens() -> None:
        assert subscribed.wait(30), "the page never opened the job's event stream"
        updates = [
            {"progress": 0.7, "progress_message": "read 7/10 blocks"},
            {"status": "succeeded", "progress": 1.0, "progress_message": "read 10/10 blocks"},
        ]
        for values in updates:
            time.sleep(0.2)
            with engine.begin() as conn:
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))

    app = watching(create_app(api_settings(db_url, api_keys=[])), f"/jobs/{job_id}/events", subscribed)
    updater = threading.Thread(target=finish_job_once_the_page_listens)
    with BackgroundServer(app) as server:
        updater.start()
        dom = _headless(chromium, tmp_path / "profile", "--dump-dom", f"{server.url}/dashboard").stdout
        updater.join()
    engine.dispose()
    assert subscribed.is_set()
    assert "read 10/10 blocks" in dom  # only the event stream ever said so
    assert 'class="status status-succeeded">succeeded<' in dom
    assert '<progress max="1" value="1">' in dom


def test_experiment_page_renders_in_headless_chromium(finished: FinishedCampaign, tmp_path: Path) -> None:
    chromium = _chromium()
    with BackgroundServer(create_app(api_settings(finished.url))) as server:
        page_url = f"{server.url}/dashboard/experiments/{finished.experiment_id}"
        dom = _headless(chromium, tmp_path / "profile", "--dump-dom", page_url).stdout
        screenshot = tmp_path / "experiment.png"
        _headless(chromium, tmp_path / "profile", f"--screenshot={screenshot}", page_url)
    assert table_rows(dom, "accuracy") == expected_accuracy_rows(finished.url)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000  # a rendered page with tables, not a blank canvas


def test_the_api_and_the_overview_show_each_board_link(client: TestClient, db_url: str) -> None:
    for name in ("bench-1", "bench-2", "bench-3"):
        client.post("/stations", json=station_body(name), headers=AUTH)
    ids = {s["name"]: s["id"] for s in client.get("/stations").json()["items"]}
    engine = make_engine(db_url)
    with engine.begin() as conn:
        station_link.link_up(conn, ids["bench-1"])
        down_since = datetime(2026, 12, 1, 4, 50, 12, tzinfo=UTC)
        station_link.link_down(conn, ids["bench-2"], since=down_since, attempts=3)
    engine.dispose()
    links = {s["name"]: s["link"] for s in client.get("/stations").json()["items"]}
    assert {k: v for k, v in links["bench-2"].items() if k != "worker_heartbeat_at"} == {
        "state": "down", "down_since": "2026-12-01T04:50:12Z", "attempts": 3,
    }
    assert (links["bench-1"]["state"], links["bench-3"]["state"]) == ("up", None)
    rows = table_rows(client.get("/").text, "stations")[1:]
    assert [row[-1] for row in rows] == ["up", "down since 2026-12-01 04:50:12 UTC (3 attempts)", "unknown"]


def test_a_paused_queue_shows_on_the_api_the_overview_and_health(client: TestClient, db_url: str) -> None:
    client.post("/stations", json=station_body("bench-1"), headers=AUTH)
    [station_id] = [s["id"] for s in client.get("/stations").json()["items"]]
    engine = make_engine(db_url)
    with engine.begin() as conn:
        down_since = datetime(2026, 12, 1, 4, 50, 12, tzinfo=UTC)
        station_link.link_down(conn, station_id, since=down_since, attempts=12, paused=True)
    engine.dispose()
    [link] = [s["link"] for s in client.get("/stations").json()["items"]]
    assert (link["state"], link["down_since"], link["attempts"]) == ("paused", "2026-12-01T04:50:12Z", 12)
    [row] = table_rows(client.get("/").text, "stations")[1:]
    assert row[-1] == "paused since 2026-12-01 04:50:12 UTC (12 attempts, queue paused)"
    health = client.get("/health")
    assert health.status_code == 503
    [reason] = health.json()["reasons"]
    assert reason.endswith(
        "link is down since 2026-12-01T04:50:12+00:00 (12 attempts to re-open it); its queue is paused"
    )
