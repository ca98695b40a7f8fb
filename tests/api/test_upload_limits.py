"""Uploads are bounded as they arrive and as they would expand: a checkpoint of a few MB
that inflates to a gigabyte is refused before it is loaded, with the API's memory intact."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from api.app import create_app
from hwctl.nn.models import build_model
from tests.api.archives import checkpoint_bomb, edit_weights_config
from tests.api.conftest import API_KEY, AUTH, api_settings, assert_problem, migrated_sqlite_url, upload

GIB = 1 << 30
UPLOAD_LIMIT = 4 << 20
MEMORY_GROWTH_LIMIT = 100 << 20


@pytest.fixture(scope="module")
def gigabyte_bomb() -> bytes:
    bomb = checkpoint_bomb(GIB)
    assert len(bomb) <= UPLOAD_LIMIT
    return bomb


def test_a_checkpoint_that_would_expand_past_the_limit_is_413_and_not_stored(
    db_url: str, gigabyte_bomb: bytes
) -> None:
    settings = api_settings(db_url, max_upload_bytes=UPLOAD_LIMIT, max_upload_expanded_bytes=64 << 20)
    with TestClient(create_app(settings)) as client:
        assert_problem(upload(client, gigabyte_bomb, "bomb.pt"), 413, "bomb.pt", f"at most {64 << 20}")
        assert client.get("/networks").json()["total"] == 0


def test_a_checkpoint_within_the_expansion_limit_still_loads(db_url: str, digits_checkpoint: bytes) -> None:
    settings = api_settings(db_url, max_upload_expanded_bytes=len(digits_checkpoint) + 4096)
    with TestClient(create_app(settings)) as client:
        assert upload(client, digits_checkpoint).status_code == 201


def test_a_graph_whose_weights_copy_past_the_limit_is_413_and_not_stored(db_url: str) -> None:
    """A `.pt2` weight of 72 stored values viewed with zero strides as 128 MiB: its entries
    are small, and its float32 copy is counted against the API's own expansion limit."""
    buffer = io.BytesIO()
    graph = torch.export.export(build_model("digits-resnet").eval(), (torch.zeros(2, 1, 8, 8),))
    torch.export.save(graph, buffer)

    def repeat(config: dict[str, Any]) -> None:
        meta = config["conv1.weight"]["tensor_meta"]
        meta["sizes"], meta["strides"] = [{"as_int": 4096}, {"as_int": 8192}], [{"as_int": 0}, {"as_int": 0}]

    archive = edit_weights_config(buffer.getvalue(), repeat)
    settings = api_settings(db_url, max_upload_expanded_bytes=64 << 20)
    with TestClient(create_app(settings)) as client:
        assert_problem(upload(client, archive, "repeated.pt2"), 413, "repeated.pt2", "conv1.weight copies to")
        assert client.get("/networks").json()["total"] == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.fixture(scope="module")
def api_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """`hwctl serve --no-embedded` as deployed: its own process, so its memory is its own."""
    tmp_path = tmp_path_factory.mktemp("api")
    db_url = migrated_sqlite_url(tmp_path)
    port = _free_port()
    env = os.environ | {
        "HWCTL_DATABASE_URL": db_url, "HWCTL_API_KEYS": API_KEY, "HWCTL_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
    }  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "hwctl", "serve", "--no-embedded", "--no-access-log", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/stations", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log = process.stderr.read().decode() if process.stderr else ""
            raise AssertionError(f"the API did not start: {log}")
        time.sleep(0.1)
    yield url, process.pid
    process.terminate()
    process.wait(timeout=10)


def test_a_gigabyte_bomb_costs_the_api_process_under_100_mb(
    api_process: tuple[str, int], gigabyte_bomb: bytes, digits_checkpoint: bytes
) -> None:
    url, pid = api_process
    files = {"file": ("digits.pt", digits_checkpoint, "application/octet-stream")}
    assert httpx.post(f"{url}/networks", files=files, headers=AUTH, timeout=60).status_code == 201  # warm
    before = _peak_rss_bytes(pid)
    files = {"file": ("bomb.pt", gigabyte_bomb, "application/octet-stream")}
    response = httpx.post(f"{url}/networks", files=files, headers=AUTH, timeout=60)
    growth = _peak_rss_bytes(pid) - before
    assert growth <= MEMORY_GROWTH_LIMIT, f"the API's peak memory grew by {growth / 2**20:.0f} MiB"
    assert response.status_code == 413, response.text
    assert "expand" in response.json()["detail"]


def test_a_body_without_a_length_is_refused_once_past_the_limit_not_at_its_end(
    api_process: tuple[str, int],
) -> None:
    """Chunked, no Content-Length: the 413 comes while the client still has most to send."""
    url, _ = api_process
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(
            f"POST /networks HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {API_KEY}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.pt"\r\n\r\n'
        connection.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        chunk = b"x" * (1 << 18)
        framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        sent = 0
        connection.settimeout(0.05)
        reply = b""
        while sent < 16 * UPLOAD_LIMIT and not reply:
            try:
                connection.sendall(framed)
                sent += len(chunk)
                reply = connection.recv(4096)
            except TimeoutError:
                continue
            except OSError:  # the server closed the connection after answering
                break
        connection.settimeout(10)
        while not reply.endswith(b"}"):  # the problem body follows its headers
            received = connection.recv(4096)
            if not received:
                break
            reply += received
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 2 * UPLOAD_LIMIT  # refused soon after the limit, not after the whole body
    assert b"at most" in reply


def test_a_body_that_stops_arriving_is_408_not_a_connection_held_open_for_ever() -> None:
    """A Content-Length of 1,000 and 2 bytes sent: the route waited for the rest as long as
    the client kept the connection open (a slow-body hold, one per connection)."""
    from starlette.exceptions import HTTPException

    from api.body_limit import BodyLimit

    async def route(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass

    async def client_sends_two_bytes_then_nothing() -> Any:
        if not sent:
            sent.append(True)
            return {"type": "http.request", "body": b"{}", "more_body": True}
        await asyncio.Event().wait()  # the rest never comes

    async def send(message: Any) -> None:
        pass

    sent: list[bool] = []
    scope = {"type": "http", "headers": [(b"content-length", b"1000")]}
    middleware = BodyLimit(route, limit_for=lambda scope: 1 << 20, idle_s=0.2)
    with pytest.raises(HTTPException) as refused:
        asyncio.run(asyncio.wait_for(middleware(scope, client_sends_two_bytes_then_nothing, send), 30))
    assert refused.value.status_code == 408
