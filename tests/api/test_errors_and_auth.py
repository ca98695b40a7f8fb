"""Bad inputs and missing credentials answer with a problem-details body that says why."""

from __future__ import annotations

import io
import pickle
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from api.app import create_app
from hwctl.store.errors import NotMigratedError
from tests.api.conftest import AUTH, api_settings, assert_problem, station_body, upload


def test_mutating_call_without_key_is_401(client: TestClient) -> None:
    assert_problem(client.post("/stations", json=station_body()), 401, "X-API-Key")


def test_mutating_call_with_wrong_key_is_403(client: TestClient) -> None:
    response = client.post("/stations", json=station_body(), headers={"X-API-Key": "guess"})
    assert_problem(response, 403, "not a valid API key")


def test_reads_need_a_key_only_when_configured(db_url: str) -> None:
    with TestClient(create_app(api_settings(db_url, api_read_requires_key=True))) as strict:
        assert_problem(strict.get("/stations"), 401, "X-API-Key")
        assert strict.get("/stations", headers=AUTH).status_code == 200


def test_oversized_upload_is_413_and_names_the_limit(db_url: str, digits_checkpoint: bytes) -> None:
    limit = len(digits_checkpoint) - 1
    with TestClient(create_app(api_settings(db_url, max_upload_bytes=limit))) as small:
        assert_problem(upload(small, digits_checkpoint), 413, f"at most {limit} bytes")
        assert small.get("/networks").json()["total"] == 0


def test_non_checkpoint_file_is_422_not_a_crash(client: TestClient) -> None:
    assert_problem(upload(client, b"just some text\n", "notes.txt"), 422, "notes.txt", "not a usable")


def test_arbitrary_pickle_is_refused_not_executed(client: TestClient, tmp_path: Path) -> None:
    """`weights_only=True`: a pickle naming a callable is rejected before anything runs."""
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(str(marker)))
    assert_problem(upload(client, payload, "evil.pt"), 422, "evil.pt")
    assert not marker.exists()


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_checkpoint_whose_tensors_do_not_fit_its_architecture_is_422(client: TestClient) -> None:
    buffer = io.BytesIO()
    torch.save({"arch": "digits-resnet", "state_dict": {"conv1.weight": torch.zeros(1)}, "meta": {}}, buffer)
    assert_problem(upload(client, buffer.getvalue()), 422, "digits.pt")


def test_station_with_bad_geometry_lists_the_field(client: TestClient) -> None:
    body = station_body(geometry={"tiles": 0, "rows": 64, "cols": 64})
    problem = assert_problem(client.post("/stations", json=body, headers=AUTH), 422, "geometry.tiles")
    assert problem["errors"][0]["field"] == "body.geometry.tiles"


def test_unknown_path_is_a_problem_too(client: TestClient) -> None:
    assert_problem(client.get("/no-such-thing"), 404, "Not Found")


def test_service_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    with pytest.raises(NotMigratedError, match="hwctl db upgrade"):
        create_app(api_settings(f"sqlite:///{tmp_path / 'empty.sqlite'}"))


def test_every_kind_of_error_has_one_problem_shape(client: TestClient) -> None:
    """The framework's own 404/405/422, ours and the store's: one type scheme, the status phrase."""
    client.post("/stations", json=station_body(), headers=AUTH)
    answers = {
        "unknown path": (client.get("/no-such-thing"), 404),
        "unknown row": (client.get("/experiments/999"), 404),
        "unknown station": (client.get("/stations/nowhere"), 404),
        "wrong method": (client.delete("/stations"), 405),
        "bad body": (client.post("/stations", json={"name": ""}, headers=AUTH), 422),
        "bad query": (client.get("/jobs", params={"status": "sleeping"}), 422),
        "conflict": (client.post("/stations", json=station_body(), headers=AUTH), 409),
        "no key": (client.post("/stations", json=station_body()), 401),
    }
    for what, (response, status) in answers.items():
        problem = assert_problem(response, status)
        phrase = HTTPStatus(status).phrase
        assert problem["type"] == "urn:hwctl:problem:" + phrase.lower().replace(" ", "-"), what
        assert problem["title"] == phrase, what
        assert set(problem) - {"errors"} == {"type", "title", "status", "detail"}, what
