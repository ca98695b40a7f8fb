"""Domain errors raised by transports, drivers and the simulated board.

Each carries a message a lab user understands; the API, the wire (`ERR,<code>,"msg"`)
and the CLI map them once, at their boundary.
"""

from __future__ import annotations


class DriverError(Exception):
    """Base class for every instrument-side failure."""


class LinkError(DriverError):
    """The link to the board failed: dropped connection, timeout, refused connect."""


class ProtocolError(DriverError):
    """The board's reply could not be parsed (garbled line, malformed binary block)."""


class DesyncError(ProtocolError):
    """A reply's framing broke (bad block header, oversized block, endless line): where the
    next reply starts is unknown, so the link must be re-opened before it is used again."""


class BoardError(DriverError):
    """The board answered `ERR,<code>,"<message>"`."""

    def __init__(self, code: int, message: str, command: str = "") -> None:
        self.code = code
        self.message = message
        self.command = command
        where = f" (command {command!r})" if command else ""
        super().__init__(f"board error {code}: {message}{where}")


class LimitError(DriverError):
    """A pulse amplitude exceeds the session or hardware limit; nothing was applied."""
