"""`hwctl experiment run|show` as a client of a live API (uvicorn, SQLite, worker, chip over TCP)."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from api.app import create_app
from api.server import BackgroundServer
from hwctl.cli import main
from hwctl.embedded_chip import SimChipOptions, start_embedded_chip
from hwctl.nn.models import build_model, save_checkpoint
from hwctl.store.engine import make_engine
from hwctl.worker import Worker, WorkerOptions
from tests.api.conftest import API_KEY, api_settings, migrated_sqlite_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
STATION = "cli-sim"


@pytest.fixture
def api_url(tmp_path: Path) -> Iterator[str]:
    """A live API with a registered station whose worker owns a virtual-clock chip on TCP."""
    url = migrated_sqlite_url(tmp_path)
    chip = start_embedded_chip(SimChipOptions(virtual=True, seed=3))
    worker_engine = make_engine(url)
    worker = Worker(worker_engine, STATION, WorkerOptions(poll_s=0.05))
    with BackgroundServer(create_app(api_settings(url))) as server:
        httpx.post(f"{server.url}/stations", headers={"X-API-Key": API_KEY}, json={
            "name": STATION, "resource": chip.resource, "chip_serial": "SIM-0001", "clock_kind": "virtual",
            "geometry": {"tiles": 16, "rows": 512, "cols": 256},
        }).raise_for_status()  # fmt: skip
        worker.start()
        try:
            yield server.url
        finally:
            worker.stop()
            worker_engine.dispose()
            chip.stop()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "digits.pt"
    save_checkpoint(path, "digits-resnet", build_model("digits-resnet"), {"recipe": "untrained"})
    return path


def test_experiment_run_uploads_submits_follows_and_prints_the_accuracy_table(
    api_url: str, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = ["--api", api_url, "--api-key", API_KEY]
    code = main(["experiment", "run", "--network", str(checkpoint), "--station", STATION,
                 "--offsets", "25,600,3600", "--methods", "none,gdc", "--n-images", "60", *api])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"experiment 1 submitted", out)
    assert "GDC's statistic: both-bitlines" in out  # the default
    assert re.search(r"^scheduled\s+read at\s+none \(%\)\s+GDC \(%\)$", out, re.M), out
    assert re.search(r"^25 s\s+25 s\s+[\d.]+\s+[\d.]+$", out, re.M), out
    assert re.search(r"^10 min\s+10 min\s+[\d.]+\s+[\d.]+$", out, re.M), out
    assert re.search(r"^1 h\s+1 h\s+[\d.]+\s+[\d.]+$", out, re.M), out
    assert re.search(r"[\d,]+ of [\d,]+ devices fitted", out), out  # the drift summary

    assert main(["experiment", "show", "1", *api]) == 0
    shown = capsys.readouterr().out
    assert "experiment 1 'digits on cli-sim' on cli-sim: done" in shown
    assert "jobs 8/8 finished, readouts 3/3" in shown  # program, 3 readbacks, 3 evaluations, analyze


def test_experiment_run_submits_an_uploaded_network_by_id_without_following(
    api_url: str, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = ["--api", api_url, "--api-key", API_KEY]
    assert main(["experiment", "run", "--network", str(checkpoint), "--station", STATION, "--no-follow",
                 "--schedule-points", "3", "--gdc-statistic", "abs-weights", *api]) == 0  # fmt: skip
    detail = httpx.get(f"{api_url}/experiments/1", headers={"X-API-Key": API_KEY}).json()
    assert detail["spec"]["evaluation"]["gdc_statistic"] == "abs-weights"
    # One experiment at a time per station: the second waits for the first, or its cancel.
    assert main(["experiment", "run", "--network", "1", "--station", STATION, "--no-follow", *api]) == 2
    assert "busy with experiment 1" in capsys.readouterr().err
    cancel = httpx.post(f"{api_url}/experiments/1/cancel", headers={"X-API-Key": API_KEY})
    assert cancel.status_code == 200, cancel.text
    assert main(["experiment", "run", "--network", "1", "--station", STATION, "--no-follow", *api]) == 0
    out = capsys.readouterr().out
    assert "experiment 2 submitted" in out


def test_unknown_experiment_and_station_are_reported_from_the_api(
    api_url: str, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = ["--api", api_url, "--api-key", API_KEY]
    assert main(["experiment", "show", "99", *api]) == 2
    assert "404 experiment 99 does not exist" in capsys.readouterr().err

    assert main(["experiment", "run", "--network", str(checkpoint), "--station", "nowhere", *api]) == 2
    err = capsys.readouterr().err
    assert "unknown station 'nowhere'" in err and STATION in err
    assert "Traceback" not in err


def test_a_wrong_key_or_absent_service_is_a_message_not_a_traceback(
    api_url: str, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["experiment", "run", "--network", str(checkpoint), "--station", STATION, "--api", api_url,
                 "--api-key", "wrong"]) == 2  # fmt: skip
    assert "POST /networks: 403" in capsys.readouterr().err

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens once the socket is closed
    assert main(["experiment", "show", "1", "--api", f"http://127.0.0.1:{closed_port}"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the hwctl API at http://127.0.0.1:{closed_port}" in err
    assert "Traceback" not in err


def test_an_invalid_spec_is_one_message_naming_the_field_as_the_api_does(
    api_url: str, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = ["--api", api_url, "--api-key", API_KEY]
    assert main(["experiment", "run", "--network", str(checkpoint), "--station", STATION,
                 "--offsets=-5,25", *api]) == 2  # fmt: skip
    err = capsys.readouterr().err

    answer = httpx.post(f"{api_url}/experiments", headers={"X-API-Key": API_KEY}, json={
        "network_id": 1, "station": STATION, "schedule": {"offsets_s": [-5, 25]},
    })  # fmt: skip
    assert answer.status_code == 422
    api_detail = answer.json()["detail"].removeprefix("body.")
    assert "schedule.offsets_s" in api_detail and "positive" in api_detail
    assert f"invalid experiment: {api_detail}" in err
    assert len(err.strip().splitlines()) == 1, err
    assert "errors.pydantic.dev" not in err and "Traceback" not in err
