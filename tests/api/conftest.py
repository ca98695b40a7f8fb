"""Fixtures: a real migrated SQLite file per test, an app over it, and valid inputs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from api.app import create_app
from hwctl.nn.models import build_model, save_checkpoint
from hwctl.settings import Settings
from hwctl.store.engine import make_engine
from hwctl.store.migrate import upgrade

API_KEY = "test-key-0123"
AUTH = {"X-API-Key": API_KEY}


def migrated_sqlite_url(directory: Path) -> str:
    url = f"sqlite:///{directory / 'hwctl.sqlite'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def api_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": url, "api_keys": [API_KEY], "sse_poll_s": 0.02, **overrides}
    return Settings(_env_file=None, **values)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return migrated_sqlite_url(tmp_path)


@pytest.fixture
def settings(db_url: str) -> Settings:
    return api_settings(db_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real (untrained) digits ResNet checkpoint, as `hwctl train` writes it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "digits.pt"
    save_checkpoint(path, "digits-resnet", build_model("digits-resnet"), {"recipe": "untrained", "epochs": 0})
    return path.read_bytes()


# 262,144 devices: the digits ResNet (37,648) fits, as a submission now checks; a simulated
# chip of this size still allocates in milliseconds (the CIFAR ResNets need 16×512×256).
STATION_GEOMETRY = {"tiles": 4, "rows": 256, "cols": 256}
CIFAR_STATION_GEOMETRY = {"tiles": 16, "rows": 512, "cols": 256}  # 4.2 M devices: only ever stored


def station_body(name: str = "bench-1", **overrides: Any) -> dict[str, Any]:
    body = {
        "name": name, "resource": "TCPIP::10.0.0.7::5025::SOCKET", "chip_serial": "PCM-42",
        "geometry": STATION_GEOMETRY, "amplitude_limit_ua": 400.0,
    }
    return body | overrides


def upload(client: TestClient, data: bytes, filename: str = "digits.pt", **headers: str) -> Any:
    files = {"file": (filename, io.BytesIO(data), "application/octet-stream")}
    return client.post("/networks", files=files, headers=AUTH | headers)


def assert_problem(response: Any, status: int, *phrases: str) -> dict[str, Any]:
    """An RFC 9457 problem with `status` whose detail mentions every phrase."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    assert problem["title"] and problem["type"]
    for phrase in phrases:
        assert phrase in problem["detail"], problem["detail"]
    return dict(problem)
