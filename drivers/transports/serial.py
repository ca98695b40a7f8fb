"""pyserial transport: `serial_for_url`, so `socket://host:port` and `/dev/tty…` both work.

A `socket://` port is opened by pyserial and then read through `SocketStream` (silence
limit per chunk, keep-alive, abort); a real serial line reads in chunks, each bounded by
the silence limit, and `abort()` cancels a pending read.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Sequence

import serial

from drivers.errors import LinkError
from drivers.protocol import TERMINATOR, Buffer
from drivers.transports.base import DEFAULT_TIMEOUT_S, MAX_LINE_BYTES, StreamTransport, line_too_long
from drivers.transports.sockets import SocketStream

CHUNK_BYTES = 1 << 16


class SerialTransport(StreamTransport):
    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S, baud_rate: int = 115200) -> None:
        self.resource, self.timeout_s = url, timeout_s
        try:
            self._port = serial.serial_for_url(
                url, baudrate=baud_rate, timeout=timeout_s, write_timeout=timeout_s
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"cannot open {url}: {exc}") from exc
        sock = getattr(self._port, "_socket", None)
        self._stream = SocketStream(sock, url, timeout_s) if isinstance(sock, socket.socket) else None
        if self._stream is None:  # a real line: 10 bits a byte, half the nominal rate counts as alive
            self.min_rate_bytes_s = min(self.min_rate_bytes_s, baud_rate / 20)

    def write(self, parts: Sequence[Buffer]) -> None:
        self._check_aborted()
        data = b"".join(parts)
        self._sent(len(data))
        if self._stream is not None:
            self._stream.sendall(data)
            return
        try:
            self._port.write(data)
            self._port.flush()
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"{self.resource}: write failed: {exc}") from exc

    def _read_exactly(self, n_bytes: int, deadline: float) -> bytes:
        if self._stream is not None:
            return self._stream.read_exactly(n_bytes, deadline)
        data = bytearray()
        while len(data) < n_bytes:
            data += self._read_chunk(min(n_bytes - len(data), CHUNK_BYTES), deadline, f"{n_bytes}-byte reply")
        return bytes(data)

    def _read_line(self, deadline: float) -> bytes:
        if self._stream is not None:
            return self._stream.read_line(deadline)
        line = bytearray()
        while not line.endswith(TERMINATOR):
            if len(line) > MAX_LINE_BYTES:
                raise line_too_long(self.resource)
            line += self._read_chunk(CHUNK_BYTES, deadline, "complete reply line", until=TERMINATOR)
        return bytes(line)

    def _read_chunk(self, n_bytes: int, deadline: float, what: str, until: bytes | None = None) -> bytes:
        """Up to `n_bytes` (or through `until`): at least one byte within the silence limit."""
        self._check_aborted()
        if time.monotonic() > deadline:
            raise self._late(what)
        try:
            chunk = self._port.read(n_bytes) if until is None else self._port.read_until(until, n_bytes)
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"{self.resource}: read failed: {exc}") from exc
        self._check_aborted()
        if not chunk:
            raise self._silence(what)
        return bytes(chunk)

    def abort(self) -> None:
        super().abort()
        if self._stream is not None:
            self._stream.abort()
        else:
            with contextlib.suppress(Exception):
                self._port.cancel_read()

    def close(self) -> None:
        self._port.close()
