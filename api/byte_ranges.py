"""HTTP byte ranges (RFC 9110 §14): which part of a download a `Range` header asks for.

Only single ranges are served. A header this module cannot read, or one asking for
several ranges, is ignored (the whole body, 200), as the RFC allows; a well-formed range
that starts past the end is unsatisfiable (416 with `Content-Range: bytes */size`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SINGLE = re.compile(r"bytes=(\d*)-(\d*)")


class UnsatisfiableRange(ValueError):
    """The range lies wholly past the end of the body."""


@dataclass(frozen=True)
class ByteRange:
    """Bytes `start`…`stop` − 1 of a body of `size` bytes."""

    start: int
    stop: int
    size: int

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{self.size}"

    @property
    def length(self) -> int:
        return self.stop - self.start


def requested_range(header: str | None, size: int) -> ByteRange | None:
    """The single range `header` asks for, clipped to the body; None: send it all.

    `bytes=a-b` (inclusive), `bytes=a-` (to the end), `bytes=-n` (the last n bytes).
    """
    if header is None:
        return None
    match = _SINGLE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0:
            raise UnsatisfiableRange(f"an empty suffix range of a {size}-byte body")
        return ByteRange(max(size - suffix, 0), size, size) if size else _unsatisfiable(header, size)
    start = int(first)
    stop = size if not last else int(last) + 1
    if last and stop <= start:
        return None  # last before first: syntactically invalid, ignored
    if start >= size:
        _unsatisfiable(header, size)
    return ByteRange(start, min(stop, size), size)


def _unsatisfiable(header: str, size: int) -> ByteRange:
    raise UnsatisfiableRange(f"{header!r} lies past the end of a {size}-byte body")
