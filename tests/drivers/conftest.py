"""Fixtures for the wire tests: a small simulated board, served on an ephemeral port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from drivers.base import Geometry
from drivers.chip import ChipDriver
from drivers.sim.board import SimBoard
from drivers.sim.server import ServerThread, serve_in_thread
from drivers.transports.factory import open_transport

SMALL = Geometry(tiles=2, rows=64, cols=64)
TIMEOUT_S = 2.0
SHORT_TIMEOUT_S = 0.5
TRANSPORTS = ("inproc", "visa-tcp", "serial-tcp")


@pytest.fixture
def board() -> SimBoard:
    return SimBoard(SMALL, seed=7)


@pytest.fixture
def server(board: SimBoard) -> Iterator[ServerThread]:
    handle = serve_in_thread(board)
    yield handle
    handle.stop()


def resource_for(kind: str, server: ServerThread) -> str:
    return {
        "inproc": "inproc://",
        "visa-tcp": server.resource,
        "serial-tcp": f"socket://127.0.0.1:{server.port}",
    }[kind]


def _driver(kind: str, board: SimBoard, server: ServerThread, timeout_s: float) -> Iterator[ChipDriver]:
    driver = ChipDriver(open_transport(resource_for(kind, server), timeout_s=timeout_s, board=board))
    yield driver
    driver.close()


@pytest.fixture(params=TRANSPORTS)
def chip(request: pytest.FixtureRequest, board: SimBoard, server: ServerThread) -> Iterator[ChipDriver]:
    """The same board behind each transport: the contract must hold for all of them."""
    yield from _driver(request.param, board, server, TIMEOUT_S)


@pytest.fixture(params=TRANSPORTS)
def impatient_chip(
    request: pytest.FixtureRequest, board: SimBoard, server: ServerThread
) -> Iterator[ChipDriver]:
    """Like `chip` with a short timeout, for tests that must wait one out."""
    yield from _driver(request.param, board, server, SHORT_TIMEOUT_S)
