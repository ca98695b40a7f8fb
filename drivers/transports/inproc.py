"""In-process transport: bytes straight into the server's `BoardSession`, no socket.

The codec, the command table and every board rule run exactly as over TCP, so the
contract suite holds for all transports; only the kernel's socket is missing. Reply
delays injected with `SIM:FAUL:DEL` are honoured against `timeout_s` like on a wire, and
`abort()` from another thread ends such a wait at once.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence

from drivers.errors import LinkError
from drivers.protocol import TERMINATOR, Buffer
from drivers.sim.board import SimBoard
from drivers.sim.server import BoardCore, BoardSession
from drivers.transports.base import DEFAULT_TIMEOUT_S, StreamTransport


class InProcessTransport(StreamTransport):
    def __init__(self, board: SimBoard | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.board = board if board is not None else SimBoard()
        self.resource, self.timeout_s = "inproc://", timeout_s
        self._session = BoardSession(BoardCore(self.board, watchdog_s=None))
        self._arriving: collections.deque[tuple[float, bytes]] = collections.deque()
        self._buffer = bytearray()
        self._last_arrival = 0.0
        self._closed_by_board = False
        self._abort = threading.Event()

    def write(self, parts: Sequence[Buffer]) -> None:
        self._check_aborted()
        if self._session.closed:
            return  # like a socket whose peer has gone: the write vanishes, the read fails
        for part in parts:
            for out in self._session.feed(part):
                self._last_arrival = max(time.monotonic(), self._last_arrival) + out.delay_s
                self._arriving.append((self._last_arrival, b"".join(out.parts)))
                self._closed_by_board |= out.close

    def _wait_until(self, moment: float) -> None:
        if self._abort.wait(max(0.0, moment - time.monotonic())):
            self._check_aborted()

    def _receive(self, n_bytes: int, deadline: float) -> None:
        """Move replies that have 'arrived' into the buffer until it holds `n_bytes`."""
        while len(self._buffer) < n_bytes and self._arriving:
            arrival, data = self._arriving[0]
            limit = min(deadline, time.monotonic() + self.timeout_s)
            if arrival > limit:
                self._wait_until(limit)
                raise self._silence("reply")
            self._wait_until(arrival)
            self._buffer += data
            self._arriving.popleft()

    def _take(self, n_bytes: int) -> bytes:
        data = bytes(self._buffer[:n_bytes])
        del self._buffer[:n_bytes]
        return data

    def _read_exactly(self, n_bytes: int, deadline: float) -> bytes:
        self._receive(n_bytes, deadline)
        if len(self._buffer) < n_bytes:
            raise self._no_more(f"{n_bytes}-byte reply")
        return self._take(n_bytes)

    def _read_line(self, deadline: float) -> bytes:
        while (end := self._buffer.find(TERMINATOR)) < 0:
            if not self._arriving:
                raise self._no_more("reply line")
            self._receive(len(self._buffer) + 1, deadline)
        return self._take(end + 1)

    def _no_more(self, what: str) -> LinkError:
        if self._closed_by_board or self._session.closed:
            return LinkError(f"{self.resource}: connection closed by the board while waiting for a {what}")
        return LinkError(f"{self.resource}: no {what} pending (command incomplete?)")

    def abort(self) -> None:
        super().abort()
        self._abort.set()

    def close(self) -> None:
        self._session.closed = True
