"""Dead links are seen in seconds: a black hole, a reset or an abort ends a blocked read.

The board server sits behind `tests.faultproxy.FaultProxy`; the driver uses the
transports' default silence limit (`DEFAULT_TIMEOUT_S`), as the worker does.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from drivers import protocol as p
from drivers.base import Geometry
from drivers.chip import ChipDriver
from drivers.errors import LinkError
from drivers.sim.board import SimBoard
from drivers.sim.server import ServerThread, serve_in_thread
from drivers.transports.base import DEFAULT_TIMEOUT_S
from drivers.transports.factory import open_transport
from tests.faultproxy import FaultProxy

DEAD_LINK_SEEN_S = 5.0
KINDS = ("visa", "serial")
# Big enough that a read's reply is several TCP segments (and several proxy chunks).
GEOMETRY = Geometry(tiles=4, rows=256, cols=256)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    handle = serve_in_thread(SimBoard(GEOMETRY, seed=3))
    yield handle
    handle.stop()


@pytest.fixture
def proxy(server: ServerThread) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", server.port)) as handle:
        yield handle


def _after(delay_s: float, action: Callable[[], object]) -> threading.Timer:
    timer = threading.Timer(delay_s, action)
    timer.start()
    return timer


def _delayed_read(chip: ChipDriver, delay_s: float) -> None:
    """A whole-array read whose reply the board holds back for `delay_s`."""
    chip.transport.write(p.encode_command("SIM:FAUL:DEL", delay_s))
    chip.transport.read_response()
    chip.read_block(np.arange(GEOMETRY.n_devices, dtype=np.uint32))


@pytest.mark.parametrize("kind", KINDS)
def test_a_black_hole_mid_read_is_a_link_error_within_seconds(kind: str, proxy: FaultProxy) -> None:
    assert DEFAULT_TIMEOUT_S <= 2.0
    chip = ChipDriver(open_transport(proxy.resource(kind)))
    try:
        assert chip.geometry() == GEOMETRY
        _after(0.2, proxy.blackhole)
        started = time.monotonic()
        with pytest.raises(LinkError, match="no "):
            _delayed_read(chip, 0.5)
        assert time.monotonic() - started <= DEAD_LINK_SEEN_S
    finally:
        chip.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_reply_cut_off_half_way_is_a_link_error_within_seconds(kind: str, proxy: FaultProxy) -> None:
    chip = ChipDriver(open_transport(proxy.resource(kind)))
    try:
        chip.read_block(np.arange(16, dtype=np.uint32))
        proxy.blackhole(after_bytes=GEOMETRY.n_devices)  # a quarter of the 4-byte values get through
        started = time.monotonic()
        with pytest.raises(LinkError, match="no "):
            chip.read_block(np.arange(GEOMETRY.n_devices, dtype=np.uint32))
        assert time.monotonic() - started <= DEAD_LINK_SEEN_S
    finally:
        chip.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_reset_link_fails_the_read_at_once_and_a_new_driver_gets_through(
    kind: str, proxy: FaultProxy
) -> None:
    chip = ChipDriver(open_transport(proxy.resource(kind)))
    try:
        _after(0.2, proxy.drop)
        started = time.monotonic()
        with pytest.raises(LinkError):
            _delayed_read(chip, 1.5)
        assert time.monotonic() - started < 1.0
    finally:
        chip.close()
    with ChipDriver(open_transport(proxy.resource(kind))) as fresh:
        assert fresh.geometry() == GEOMETRY


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_then_resumed_board_is_reached_by_a_new_driver(kind: str, proxy: FaultProxy) -> None:
    proxy.refuse()
    with pytest.raises(LinkError):
        ChipDriver(open_transport(proxy.resource(kind))).geometry()
    proxy.resume()
    with ChipDriver(open_transport(proxy.resource(kind))) as chip:
        assert chip.geometry() == GEOMETRY


@pytest.mark.parametrize("kind", [*KINDS, "inproc"])
def test_abort_from_another_thread_ends_a_blocked_read_at_once(kind: str, proxy: FaultProxy) -> None:
    """What a SIGTERM handler does: the worker's blocked read returns within milliseconds."""
    resource = "inproc://" if kind == "inproc" else proxy.resource(kind)
    chip = ChipDriver(open_transport(resource, timeout_s=30.0, board=SimBoard(GEOMETRY)))
    try:
        _after(0.3, chip.abort)
        started = time.monotonic()
        with pytest.raises(LinkError, match="abort"):
            _delayed_read(chip, 20.0)
        assert time.monotonic() - started < 1.5
        with pytest.raises(LinkError):
            chip.geometry()
    finally:
        chip.close()


@pytest.mark.parametrize("kind", [*KINDS, "inproc"])
def test_a_signal_handler_that_aborts_ends_a_read_blocked_in_the_main_thread(
    kind: str, proxy: FaultProxy
) -> None:
    """SIGTERM in a worker whose main thread is blocked on the board: the handler calls
    `abort()`, the read raises `LinkError` at once (SIGALRM stands in for SIGTERM)."""
    resource = "inproc://" if kind == "inproc" else proxy.resource(kind)
    chip = ChipDriver(open_transport(resource, timeout_s=30.0, board=SimBoard(GEOMETRY)))
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: chip.abort())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        started = time.monotonic()
        with pytest.raises(LinkError, match="abort"):
            _delayed_read(chip, 20.0)
        assert time.monotonic() - started < 1.5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        chip.close()


@pytest.mark.parametrize("kind", KINDS)
def test_tcp_transports_probe_an_idle_board_with_keepalive(kind: str, proxy: FaultProxy) -> None:
    with ChipDriver(open_transport(proxy.resource(kind))) as chip:
        stream = getattr(chip.transport, "_stream", None)
        assert stream is not None, "TCP resources are read through SocketStream"
        sock = stream._sock
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            idle_s = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            interval_s = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
            probes = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
            assert idle_s + interval_s * probes <= DEAD_LINK_SEEN_S
