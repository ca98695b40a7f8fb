"""A scripted transport in the spirit of pymeasure's `expected_protocol`.

Each (command bytes, reply bytes) pair must be sent in order and every pair consumed; a
mismatch names the first byte that differs. Replies go through the real reply framing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from drivers.chip import ChipDriver
from drivers.protocol import Buffer
from drivers.transports.base import StreamTransport


def _first_difference(sent: bytes, expected: bytes) -> str:
    at = next((i for i, (a, b) in enumerate(zip(sent, expected, strict=False)) if a != b), None)
    at = min(len(sent), len(expected)) if at is None else at
    return f"byte {at}: sent {sent[at : at + 16]!r}, expected {expected[at : at + 16]!r}"


class ScriptedTransport(StreamTransport):
    def __init__(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        self.resource, self.timeout_s = "scripted://", 1.0
        self.pairs = list(pairs)
        self.reply = b""

    def write(self, parts: Sequence[Buffer]) -> None:
        sent = b"".join(bytes(part) for part in parts)
        assert self.pairs, f"unexpected command {sent[:60]!r}: the script is exhausted"
        expected, self.reply = self.pairs.pop(0)
        assert sent == expected, f"command differs at {_first_difference(sent, expected)}"

    def _read_exactly(self, n_bytes: int, deadline: float) -> bytes:
        assert len(self.reply) >= n_bytes, "driver read past the scripted reply"
        data, self.reply = self.reply[:n_bytes], self.reply[n_bytes:]
        return data

    def _read_line(self, deadline: float) -> bytes:
        end = self.reply.index(b"\n") + 1
        return self._read_exactly(end, deadline)

    def close(self) -> None:
        pass


@contextmanager
def expected_protocol(pairs: Sequence[tuple[bytes, bytes]]) -> Iterator[ChipDriver]:
    transport = ScriptedTransport(pairs)
    yield ChipDriver(transport)
    assert not transport.pairs, f"unconsumed pairs: {transport.pairs}"
    assert not transport.reply, f"unread reply bytes: {transport.reply!r}"
