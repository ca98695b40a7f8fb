"""What every transport offers the chip driver: send one command, read exactly one reply.

Framing of replies (a line, or a `#<d><len><bytes>` block then `\\n`) is decoded here once,
over two primitives each transport provides: read exactly n bytes, read one line. Both
must raise `LinkError` instead of waiting past `timeout_s`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from drivers.errors import LinkError, ProtocolError
from drivers.protocol import TERMINATOR, Buffer

MAX_LINE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Response:
    """One reply: a line without its terminator, or a block's body."""

    payload: bytes
    is_block: bool


class Transport(Protocol):
    resource: str
    timeout_s: float

    def write(self, parts: Sequence[Buffer]) -> None:
        """Send one encoded command (`protocol.encode_command`)."""
        ...

    def read_response(self) -> Response: ...

    def close(self) -> None: ...


class StreamTransport(abc.ABC):
    """Reply framing over `_read_exactly` / `_read_line`, shared by every byte stream."""

    resource: str
    timeout_s: float

    @abc.abstractmethod
    def write(self, parts: Sequence[Buffer]) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def _read_exactly(self, n_bytes: int) -> bytes:
        """Exactly `n_bytes`, or `LinkError` (timeout, closed link)."""

    @abc.abstractmethod
    def _read_line(self) -> bytes:
        """Bytes up to and including `\\n`, or `LinkError`."""

    def read_response(self) -> Response:
        first = self._read_exactly(1)
        if first != b"#":
            line = first + self._read_line() if first != TERMINATOR else first
            return Response(line.rstrip(b"\r\n"), is_block=False)
        digits = self._read_exactly(1)
        if not digits.isdigit() or digits == b"0":
            raise ProtocolError(f"malformed block header from {self.resource}: #{digits!r}")
        length_text = self._read_exactly(int(digits))
        if not length_text.isdigit():
            raise ProtocolError(f"malformed block length from {self.resource}: {length_text!r}")
        body = self._read_exactly(int(length_text))
        if self._read_exactly(1) != TERMINATOR:
            raise ProtocolError(f"block from {self.resource} not followed by a newline")
        return Response(body, is_block=True)

    def _timeout(self, what: str) -> LinkError:
        return LinkError(f"{self.resource}: no {what} within {self.timeout_s} s (link dropped or board hung)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.resource!r}, timeout_s={self.timeout_s})"
