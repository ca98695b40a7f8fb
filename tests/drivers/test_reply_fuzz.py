"""The driver under garbage replies: a typed `DriverError`, never a hang, never a bare
IndexError/ValueError, and a value of the promised type and range when it does return."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import protocol as p
from drivers.base import Geometry, Identity
from drivers.chip import ChipDriver
from drivers.errors import DesyncError, DriverError, LinkError, ProtocolError
from drivers.transports.base import MAX_LINE_BYTES, StreamTransport, line_too_long
from drivers.transports.factory import open_transport
from tests.drivers.fuzzing import WIRE, block

ADDR = np.array([3, 1, 4], np.uint32)


class GarbageTransport(StreamTransport):
    """Each command is answered by the next scripted bytes; a read past them is a dead link."""

    def __init__(self, replies: Sequence[bytes]) -> None:
        self.resource, self.timeout_s = "garbage://", 0.1
        self.replies = list(replies)
        self.buffer = b""

    def write(self, parts: Sequence[p.Buffer]) -> None:
        self.buffer += self.replies.pop(0) if self.replies else b""

    def _read_exactly(self, n_bytes: int, deadline: float) -> bytes:
        if len(self.buffer) < n_bytes:
            raise LinkError("garbage://: the board went silent")
        data, self.buffer = self.buffer[:n_bytes], self.buffer[n_bytes:]
        return data

    def _read_line(self, deadline: float) -> bytes:
        end = self.buffer.find(b"\n")
        if end < 0:
            raise line_too_long(self.resource) if len(self.buffer) > MAX_LINE_BYTES else LinkError("silent")
        return self._read_exactly(end + 1, deadline)

    def close(self) -> None:
        pass


def _finite(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value)


# method → (call, a well-formed reply sequence, check of the returned value)
CALLS: dict[str, tuple[Callable[[ChipDriver], Any], list[bytes], Callable[[Any], bool]]] = {
    "identify": (ChipDriver.identify, [b"hwctl,SIMPCM-90NM,SIM-1,sim-0.1\n"],
                 lambda v: isinstance(v, Identity) and all(vars(v).values())),
    "geometry": (ChipDriver.geometry, [b"2,64,32\n"],
                 lambda v: isinstance(v, Geometry) and min(v.tiles, v.rows, v.cols) > 0),
    "board_time_s": (ChipDriver.board_time_s, [b"12.5\n"], _finite),
    "temperature_c": (ChipDriver.temperature_c, [b"25.0\n"], _finite),
    "last_read_time_s": (ChipDriver.last_read_time_s, [b"3600.0\n"], _finite),
    "amplitude_limit_ua": (ChipDriver.amplitude_limit_ua, [b"150.0\n"], _finite),
    "errors": (ChipDriver.errors, [b'-113,"Undefined header"\n', b'+0,"No error"\n'],
               lambda v: all(isinstance(c, int) and isinstance(m, str) for c, m in v)),
    "safe_state": (ChipDriver.safe_state, [b"OK\n"], lambda v: v is None),
    "advance": (lambda c: c.advance_time_s(10.0), [b"OK\n"], lambda v: v is None),
    "reset": (lambda c: c.reset(ADDR), [b"OK,3\n"], lambda v: v is None),
    "set_pulse": (lambda c: c.set_pulse(ADDR, np.full(3, 80.0, np.float32)), [b"200.0\n", b"OK,3\n"],
                  lambda v: v is None),
    "read_block": (lambda c: c.read_block(ADDR), [block(np.ones(3, "<f4").tobytes()) + b"\n"],
                   lambda v: v.dtype == np.float32 and v.shape == (3,)),
    "read_region": (lambda c: c.read_region(0, 0, 0, 2, 3), [block(np.ones(6, "<f4").tobytes()) + b"\n"],
                    lambda v: v.dtype == np.float32 and v.shape == (2, 3)),
}


@st.composite
def mutated(draw: st.DrawFn, reply: bytes) -> bytes:
    """A reply truncated, with bytes flipped or inserted, or replaced by a hostile one."""
    how = draw(st.sampled_from(["keep", "truncate", "flip", "insert", "hostile", "random"]))
    if how == "truncate":
        return reply[: draw(st.integers(0, max(len(reply) - 1, 0)))]
    if how == "flip" and reply:
        at = draw(st.integers(0, len(reply) - 1))
        return reply[:at] + bytes([draw(st.integers(0, 255))]) + reply[at + 1 :]
    if how == "insert":
        at = draw(st.integers(0, len(reply)))
        return reply[:at] + draw(st.binary(min_size=1, max_size=8)) + reply[at:]
    if how == "hostile":
        return draw(st.sampled_from([
            b"nan\n", b"inf\n", b"-1e999\n", b"1_0\n", b"0,0,0\n", b"-2,64,32\n", b"65536,65536,65536\n",
            b"#9999999999\n", b"#0\n", b"#14\x00\x00\x80\x7f\n", b"#3100" + b"\0" * 100 + b"\n",
            b"ERR,+x,\"?\"\n", b"ERR,+1,\"unterminated\n", b'ERR,-222,"no"\n', b"+0\n", b',,,\n',
            b"#14abcdX", b"\n", b"OK,-3\n", b"x" * (MAX_LINE_BYTES + 10),
        ]))
    if how == "random":
        return draw(st.binary(max_size=64))
    return reply


@settings(WIRE, max_examples=2500)
@given(st.sampled_from(sorted(CALLS)), st.data())
def test_any_reply_gives_a_typed_value_or_a_driver_error(method: str, data: st.DataObject) -> None:
    call, replies, valid = CALLS[method]
    transport = GarbageTransport([data.draw(mutated(reply)) for reply in replies])
    chip = ChipDriver(transport)
    try:
        value = call(chip)
    except DriverError:
        return
    assert valid(value), f"{method} returned {value!r}"


# -- over a real socket: garbage never hangs the driver ------------------------------------
class GarbageBoard:
    """A TCP 'board' that answers the first command with fixed bytes, then stays silent."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with self.listener, self.listener.accept()[0] as conn:
            conn.recv(1 << 16)
            conn.sendall(self.reply)
            conn.recv(1 << 16)  # silent until the host goes away


@pytest.fixture(params=["visa", "serial"])
def resource_for(request: pytest.FixtureRequest) -> Iterator[Callable[[GarbageBoard], str]]:
    if request.param == "visa":
        yield lambda board: f"TCPIP::127.0.0.1::{board.port}::SOCKET"
    else:
        yield lambda board: f"socket://127.0.0.1:{board.port}"


TIMEOUT_S = 0.5


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"#9999999999", DesyncError),  # a gigabyte announced: refused before reading it
        (b"#240" + b"\0" * 12, LinkError),  # a block that stops half-way
        (b"12.5", LinkError),  # a line without its newline
        (b"x" * (MAX_LINE_BYTES + 100), DesyncError),  # an endless line
        (b"\xff\xfe\n", ProtocolError),
        (block(np.ones(3, "<f4").tobytes()) + b"\n", ProtocolError),  # a block where a number is due
    ],
)
def test_garbage_from_a_real_socket_is_a_driver_error_within_the_timeout(
    reply: bytes, error: type[DriverError], resource_for: Callable[[GarbageBoard], str]
) -> None:
    board = GarbageBoard(reply)
    chip = ChipDriver(open_transport(resource_for(board), timeout_s=TIMEOUT_S))
    started = time.monotonic()
    try:
        with pytest.raises(error):
            chip.board_time_s()
        assert time.monotonic() - started < TIMEOUT_S + 1.0
    finally:
        chip.close()
