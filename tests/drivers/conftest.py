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


@pytest.fixture(params=TRANSPORTS)
def chip(request: pytest.FixtureRequest, board: SimBoard, server: ServerThread) -> Iterator[ChipDriver]:
    """The same board behind each transport: the contract must hold for all of them."""
    transport = open_transport(resource_for(request.param, server), timeout_s=TIMEOUT_S, board=board)
    driver = ChipDriver(transport)
    yield driver
    driver.close()
