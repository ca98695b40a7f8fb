"""pyserial transport: `serial_for_url`, so `socket://host:port` and `/dev/tty…` both work."""

from __future__ import annotations

from collections.abc import Sequence

import serial

from drivers.errors import LinkError
from drivers.protocol import TERMINATOR, Buffer
from drivers.transports.base import MAX_LINE_BYTES, StreamTransport


class SerialTransport(StreamTransport):
    def __init__(self, url: str, timeout_s: float = 5.0, baud_rate: int = 115200) -> None:
        self.resource, self.timeout_s = url, timeout_s
        try:
            self._port = serial.serial_for_url(
                url, baudrate=baud_rate, timeout=timeout_s, write_timeout=timeout_s
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"cannot open {url}: {exc}") from exc

    def write(self, parts: Sequence[Buffer]) -> None:
        try:
            self._port.write(b"".join(parts))
            self._port.flush()
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"{self.resource}: write failed: {exc}") from exc

    def _read_exactly(self, n_bytes: int) -> bytes:
        try:
            data = self._port.read(n_bytes)
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"{self.resource}: read failed: {exc}") from exc
        if len(data) < n_bytes:
            raise self._timeout(f"{n_bytes}-byte reply (got {len(data)})")
        return bytes(data)

    def _read_line(self) -> bytes:
        try:
            line = self._port.read_until(TERMINATOR, MAX_LINE_BYTES)
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"{self.resource}: read failed: {exc}") from exc
        if not line.endswith(TERMINATOR):
            raise self._timeout("complete reply line")
        return bytes(line)

    def close(self) -> None:
        self._port.close()
