"""Reading and writing a TCP socket with a silence limit, keep-alive and abort.

Both socket transports (VISA `TCPIP…::SOCKET` and pyserial `socket://`) open their
socket through their library, then talk through a `SocketStream`: every `recv` waits at
most the silence limit (and never past the reply's deadline), TCP keep-alive probes an
idle peer every second, and `abort()` from another thread shuts the socket down so a
blocked `recv` returns at once.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from drivers.errors import LinkError
from drivers.protocol import TERMINATOR
from drivers.transports.base import MAX_LINE_BYTES, line_too_long

# Keep-alive: first probe after 1 s idle, then every 1 s, 3 unanswered probes → reset.
KEEPALIVE_IDLE_S = 1
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_PROBES = 3
RECV_BYTES = 1 << 20
LINE_RECV_BYTES = 1 << 16
T = TypeVar("T", int, bytes)


class SocketStream:
    """One connected TCP socket, read in chunks before a deadline."""

    def __init__(self, sock: socket.socket, resource: str, silence_s: float) -> None:
        self._sock = sock
        self.resource = resource
        self.silence_s = silence_s
        self._buffer = bytearray()
        self._aborted = False
        enable_keepalive(sock, silence_s)

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self.silence_s)
        try:
            self._sock.sendall(data)
        except TimeoutError as exc:
            raise LinkError(f"{self.resource}: no room to send within {self.silence_s} s") from exc
        except OSError as exc:
            raise self._dead(f"write failed: {exc}") from exc

    def read_exactly(self, n_bytes: int, deadline: float) -> bytes:
        if len(self._buffer) >= n_bytes:
            data = bytes(self._buffer[:n_bytes])
            del self._buffer[:n_bytes]
            return data
        out = bytearray(n_bytes)  # bounded by the caller: the reply size it expects
        view = memoryview(out)
        got = len(self._buffer)
        view[:got] = self._buffer
        self._buffer.clear()
        while got < n_bytes:
            got += self._recv_into(view[got:], deadline, f"{n_bytes}-byte reply (got {got})")
        return bytes(out)

    def read_line(self, deadline: float) -> bytes:
        scanned = 0
        while (end := self._buffer.find(TERMINATOR, scanned)) < 0:
            if len(self._buffer) > MAX_LINE_BYTES:
                raise line_too_long(self.resource)
            scanned = len(self._buffer)
            self._buffer += self._recv(deadline, "reply line", lambda: self._sock.recv(LINE_RECV_BYTES))
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        return line

    def _recv_into(self, view: memoryview, deadline: float, what: str) -> int:
        """At least one byte into `view`, waiting at most the silence limit."""
        return self._recv(deadline, what, lambda: self._sock.recv_into(view, min(len(view), RECV_BYTES)))

    def _recv(self, deadline: float, what: str, receive: Callable[[], T]) -> T:
        """One `receive()` that waits at most the silence limit; empty means the peer closed."""
        if self._aborted:
            raise self._dead("aborted")
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            raise LinkError(f"{self.resource}: no complete {what} by its deadline (link too slow)")
        wait_s = min(self.silence_s, left_s)
        self._sock.settimeout(wait_s)
        try:
            received = receive()
        except TimeoutError:
            why = "link dropped or board hung" if wait_s == self.silence_s else "the reply's deadline passed"
            raise LinkError(f"{self.resource}: no {what} within {wait_s:.3g} s ({why})") from None
        except OSError as exc:
            raise self._dead(f"read failed: {exc}") from exc
        if not received:
            raise self._dead("connection closed by the board")
        return received

    def _dead(self, why: str) -> LinkError:
        return LinkError(f"{self.resource}: {'link aborted by the host' if self._aborted else why}")

    def abort(self) -> None:
        """Thread-safe: a blocked `recv` returns now (shutdown wakes it), later calls fail."""
        self._aborted = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)


def enable_keepalive(sock: socket.socket, silence_s: float) -> None:
    """Probe an idle peer every second; unacknowledged data or probes reset the link.

    TCP_USER_TIMEOUT bounds how long sent data may stay unacknowledged (a black-holed
    peer), so even a write to a vanished board fails within a few seconds.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", int(1000 * max(silence_s, KEEPALIVE_IDLE_S + KEEPALIVE_PROBES))),
    ):
        option = getattr(socket, name, None)
        if option is not None:  # Linux has all four; other systems keep their defaults
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
