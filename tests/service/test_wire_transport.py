"""The VISA TCP link a station programs its chip over: no per-command stalls, no hangs.

Whole-chip program-and-verify sends tens of mid-sized commands; with Nagle on (pyvisa-py's
default) each one waited ~40 ms for the board's delayed ACK, 3× the physics in total.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest

from drivers.base import Geometry
from drivers.chip import ChipDriver
from drivers.errors import LinkError
from drivers.sim.board import SimBoard
from drivers.sim.server import ServerThread, serve_in_thread
from drivers.transports.visa import VisaTransport

COMMANDS = 20
DEVICES_PER_COMMAND = 5_000  # a 20 kB block: a few segments, the last one partial
DELAYED_ACK_S = 0.040  # Linux's minimum delayed-ACK timeout


@pytest.fixture
def server() -> Iterator[ServerThread]:
    handle = serve_in_thread(SimBoard(Geometry(2, 128, 128), seed=3))
    yield handle
    handle.stop()


def test_mid_sized_commands_do_not_wait_for_delayed_acks(server: ServerThread) -> None:
    addresses = np.arange(DEVICES_PER_COMMAND, dtype=np.uint32)
    with ChipDriver(VisaTransport(server.resource, timeout_s=5.0)) as chip:
        chip.reset(addresses)  # connection warm
        start = time.perf_counter()
        for _ in range(COMMANDS):
            chip.reset(addresses)
        elapsed_s = time.perf_counter() - start
    # Stalling on every command would take COMMANDS × 40 ms = 0.8 s; without, ~10 ms.
    assert elapsed_s < COMMANDS * DELAYED_ACK_S / 2


def test_a_board_that_stops_reading_fails_the_write_within_the_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # connects, never reads
        port = listener.getsockname()[1]
        transport = VisaTransport(f"TCPIP::127.0.0.1::{port}::SOCKET", timeout_s=0.5)
        try:
            start = time.perf_counter()
            with pytest.raises(LinkError, match=r"within 0\.5 s"):
                transport.write([bytes(64 << 20)])  # more than the kernel buffers hold
            assert time.perf_counter() - start < 5.0
        finally:
            transport.close()
