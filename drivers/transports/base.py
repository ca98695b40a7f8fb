"""What every transport offers the chip driver: send one command, read exactly one reply.

Framing of replies (a line, or a `#<d><len><bytes>` block then `\\n`) is decoded here once,
over two primitives each transport provides: read exactly n bytes, read one line, each
before a deadline.

Dead links are seen in seconds, not after a long read: `timeout_s` is the longest
*silence* tolerated while a reply is due (each chunk must arrive within it), and the
whole reply has an overall deadline that grows with the bytes on the wire,

    deadline = t_sent + timeout_s + (bytes sent + bytes announced) / min_rate_bytes_s,

so a whole-chip block gets the time it needs while a link that goes quiet (black hole,
pulled cable, hung board) raises `LinkError` after `timeout_s`. `abort()` may be called
from any thread (a signal handler, a supervisor): a read blocked on the link raises
`LinkError` at once and every later call does too.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from drivers.errors import DesyncError, LinkError, ProtocolError
from drivers.protocol import TERMINATOR, Buffer

MAX_LINE_BYTES = 64 * 1024
DEFAULT_TIMEOUT_S = 2.0
# Slowest link-plus-board throughput still considered alive: 1 MiB/s (a whole 2M-device
# block of 8 MiB gets 8 s on top of the silence limit).
MIN_RATE_BYTES_S = float(1 << 20)


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

    def read_response(self, max_block_bytes: int = MAX_LINE_BYTES) -> Response:
        """One reply; a block announcing more than `max_block_bytes` is `DesyncError`."""
        ...

    def abort(self) -> None:
        """From any thread: fail the blocked read now, and every later call."""
        ...

    def close(self) -> None: ...


class StreamTransport(abc.ABC):
    """Reply framing over `_read_exactly` / `_read_line`, shared by every byte stream."""

    resource: str
    timeout_s: float
    min_rate_bytes_s: float = MIN_RATE_BYTES_S
    _sent_bytes: int = 0
    _aborted: bool = False

    @abc.abstractmethod
    def write(self, parts: Sequence[Buffer]) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def _read_exactly(self, n_bytes: int, deadline: float) -> bytes:
        """Exactly `n_bytes`, or `LinkError` (silence over `timeout_s`, deadline, closed link)."""

    @abc.abstractmethod
    def _read_line(self, deadline: float) -> bytes:
        """Bytes up to and including `\\n` (at most `MAX_LINE_BYTES`), or `LinkError`."""

    def abort(self) -> None:
        self._aborted = True

    def _sent(self, n_bytes: int) -> None:
        """Record a command's size: the board needs time to take it in before it answers."""
        self._sent_bytes = n_bytes

    def _check_aborted(self) -> None:
        if self._aborted:
            raise LinkError(f"{self.resource}: link aborted by the host")

    def _allowance_s(self, n_bytes: int) -> float:
        return self.timeout_s + n_bytes / self.min_rate_bytes_s

    def read_response(self, max_block_bytes: int = MAX_LINE_BYTES) -> Response:
        self._check_aborted()
        deadline = time.monotonic() + self._allowance_s(self._sent_bytes)
        first = self._read_exactly(1, deadline)
        if first != b"#":
            line = first + self._read_line(deadline) if first != TERMINATOR else first
            return Response(line.rstrip(b"\r\n"), is_block=False)
        digits = self._read_exactly(1, deadline)
        if not digits.isdigit() or digits == b"0":
            raise DesyncError(f"malformed block header from {self.resource}: #{digits!r}")
        length_text = self._read_exactly(int(digits), deadline)
        if not length_text.isdigit():
            raise DesyncError(f"malformed block length from {self.resource}: {length_text!r}")
        length = int(length_text)
        if length > max_block_bytes:
            raise DesyncError(
                f"{self.resource} announced a {length}-byte block, at most {max_block_bytes} expected"
            )
        deadline = max(deadline, time.monotonic() + self.timeout_s) + length / self.min_rate_bytes_s
        body = self._read_exactly(length, deadline)
        if self._read_exactly(1, deadline) != TERMINATOR:
            raise DesyncError(f"block from {self.resource} not followed by a newline")
        return Response(body, is_block=True)

    def _silence(self, what: str) -> LinkError:
        return LinkError(f"{self.resource}: no {what} within {self.timeout_s} s (link dropped or board hung)")

    def _late(self, what: str) -> LinkError:
        return LinkError(f"{self.resource}: no complete {what} by its deadline (link too slow or stalled)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.resource!r}, timeout_s={self.timeout_s})"


def line_too_long(resource: str) -> ProtocolError:
    return DesyncError(f"{resource}: reply line over {MAX_LINE_BYTES} bytes without a newline")
