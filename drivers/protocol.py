"""The board's wire protocol: the one command table plus its codec.

The simulated chip's server and the host driver both read `COMMANDS`, so the protocol
cannot drift between them, and `docs/protocol.md` is rendered from it. Framing: ASCII
commands ending in `\\n`, bulk data as IEEE-488.2 definite-length blocks `#<d><len><bytes>`
(little-endian uint32 addresses, float32 µS / µA), exactly one reply per command.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from drivers.errors import BoardError, ProtocolError

TERMINATOR = b"\n"
ADDRESS_DTYPE = np.dtype("<u4")
VALUE_DTYPE = np.dtype("<f4")

# SCPI-flavoured error codes (negative: SCPI standard; positive: device specific).
ERR_COMMAND = -100
ERR_UNDEFINED_HEADER = -113
ERR_DATA_OUT_OF_RANGE = -222
ERR_TOO_MUCH_DATA = -223
ERR_QUEUE_OVERFLOW = -350
ERR_SIM_ONLY = 100
ERR_BAD_ADDRESS = 101
ERR_WATCHDOG = 102
ERR_NO_READ_YET = 103
ERR_INTERNAL = 199
NO_ERROR = (0, "No error")


class Arg(enum.Enum):
    """Kinds of command argument; blocks travel as `#<d><len><bytes>`."""

    ADDRESSES = "addr-block (uint32 LE)"
    AMPLITUDES_UA = "amp-block (float32 LE, µA)"
    NUMBER = "number"
    INTEGER = "integer"


class Reply(enum.Enum):
    """Kinds of reply; every command gets exactly one, or `ERR,<code>,"<message>"`."""

    OK = "`OK`"
    COUNT = "`OK,<n>`"
    VALUE = "value line"
    BLOCK = "float32 block"


@dataclass(frozen=True)
class Command:
    header: str
    args: tuple[Arg, ...]
    reply: Reply
    summary: str
    sim_only: bool = False


def _c(header: str, args: tuple[Arg, ...], reply: Reply, summary: str, sim_only: bool = False) -> Command:
    return Command(header, args, reply, summary, sim_only)


A, INT, N = Arg.ADDRESSES, Arg.INTEGER, Arg.NUMBER
COMMANDS: tuple[Command, ...] = (
    _c("*IDN?", (), Reply.VALUE, "Identity: `<vendor>,<model>,<serial>,<firmware>`."),
    _c("*RST", (), Reply.OK, "Session limit back to the hardware maximum, faults cleared, safe state."),
    _c("*CLS", (), Reply.OK, "Clear the error queue."),
    _c("SYST:ERR?", (), Reply.VALUE, 'Pop the oldest queued error: `<code>,"<message>"`; `+0,"No error"`.'),
    _c("SYST:TIME?", (), Reply.VALUE, "Board clock in seconds."),
    _c("SYST:TEMP?", (), Reply.VALUE, "Chip temperature in °C."),
    _c("SYST:LIM:AMPL", (N,), Reply.OK, "Set the session amplitude limit (µA); -222 above the maximum."),
    _c("SYST:LIM:AMPL?", (), Reply.VALUE, "Session amplitude limit in µA."),
    _c("SYST:LIM:AMPL:MAX?", (), Reply.VALUE, "Hardware amplitude maximum in µA (read-only)."),
    _c("SAFE", (), Reply.OK, "Ground all lines, pulser off (the next pulse re-enables it)."),
    _c("ARR:SIZE?", (), Reply.VALUE, "Geometry `<tiles>,<rows>,<cols>`."),
    _c("PULS:RES", (A,), Reply.COUNT, "RESET the listed devices."),
    _c(
        "PULS:SET",
        (A, Arg.AMPLITUDES_UA),
        Reply.COUNT,
        "One SET pulse per device at its own amplitude; any amplitude over the limit rejects "
        "the whole command (-222), nothing applied, nothing clipped.",
    ),
    _c("MEAS:COND?", (A,), Reply.BLOCK, "Read the listed devices: float32 conductances in µS."),
    _c("MEAS:COND:REG?", (INT,) * 5, Reply.BLOCK, "Read rectangle `<tile>,<r0>,<c0>,<nr>,<nc>` row-major."),
    _c("MEAS:TIME?", (), Reply.VALUE, "Board time (s) of the last conductance read."),
    _c("SIM:TIME:ADV", (N,), Reply.OK, "Advance the board clock by `<s>` seconds.", True),
    _c("SIM:TIME:RATE", (N,), Reply.OK, "Accelerate an accelerated clock to `<x>`× real time.", True),
    _c("SIM:FAUL:DISC", (), Reply.OK, "Reply, then drop the connection when the next command arrives.", True),
    _c("SIM:FAUL:DEL", (N,), Reply.OK, "Delay later replies on this connection by `<s>` s (0 clears).", True),
    _c("SIM:FAUL:GARB", (), Reply.OK, "Replace the next reply on this connection by a garbled line.", True),
)
BY_HEADER: dict[str, Command] = {command.header: command for command in COMMANDS}


def render_markdown_table() -> str:
    """The command table as Markdown; docs/protocol.md embeds exactly this text."""
    rows = ["| Command | Arguments | Reply | Sim only | Meaning |", "|---|---|---|---|---|"]
    for c in COMMANDS:
        args = ", ".join(a.value for a in c.args) or "—"
        sim = "yes" if c.sim_only else ""
        rows.append(f"| `{c.header}` | {args} | {c.reply.value} | {sim} | {c.summary} |")
    return "\n".join(rows) + "\n"


# -- encoding -------------------------------------------------------------------------
Buffer = bytes | bytearray | memoryview


def encode_block(payload: Buffer | np.ndarray) -> list[Buffer]:
    """`#<d><len>` header and the payload itself (as a view, not a copy)."""
    body = memoryview(payload).cast("B")  # type: ignore[arg-type]  # ndarray exports the buffer protocol
    length = str(body.nbytes).encode()
    return [b"#" + str(len(length)).encode() + length, body]


def encode_command(header: str, *args: str | float | int | np.ndarray) -> list[Buffer]:
    """Wire form of one command: text and numbers as ASCII, numpy arrays as blocks."""
    parts: list[Buffer] = [header.encode("ascii")]
    for i, arg in enumerate(args):
        parts.append(b" " if i == 0 else b",")
        if isinstance(arg, np.ndarray):
            parts.extend(encode_block(np.ascontiguousarray(arg)))
        else:
            parts.append(repr(arg).encode("ascii") if isinstance(arg, float) else str(arg).encode("ascii"))
    parts.append(TERMINATOR)
    return parts


def quote(message: str) -> str:
    """A SCPI string: one line, in double quotes, inner quotes doubled."""
    return '"' + message.replace("\n", " ").replace('"', '""') + '"'


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise ProtocolError(f"expected a quoted string, got {text[:40]!r}")
    return text[1:-1].replace('""', '"')


def encode_error(code: int, message: str) -> bytes:
    return f"ERR,{code:+d},{quote(message)}\n".encode("ascii", "replace")


_ERR = re.compile(r'^ERR,([+-]?\d+),(".*")$')


def check_line(line: bytes, command: str) -> str:
    """Decode a reply line; raise `BoardError` for `ERR,...`, `ProtocolError` if garbled."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"garbled reply to {command!r}: {bytes(line[:40])!r}") from None
    if not text.isprintable():
        raise ProtocolError(f"garbled reply to {command!r}: {text[:40]!r}")
    if text.startswith("ERR"):
        match = _ERR.match(text)
        if not match:
            raise ProtocolError(f"malformed error reply to {command!r}: {text[:80]!r}")
        raise BoardError(int(match.group(1)), unquote(match.group(2)), command)
    return text


# -- incremental command parser (server side) -------------------------------------------
@dataclass
class ParsedCommand:
    """One framed command: its header (upper case) and raw arguments (text or block)."""

    header: str
    args: list[str | bytearray]


@dataclass
class FramingError:
    """A command that could not be framed. `fatal`: the stream cannot be resynchronised."""

    code: int
    message: str
    fatal: bool = False


@dataclass
class CommandParser:
    """Frames a byte stream into commands without per-value parsing.

    Text is gathered up to `\\n` or a block start `#`; a block's body is copied once into
    a bytearray of its declared length, so `\\n` inside blocks is harmless. A block over
    `max_block_bytes` is skipped (the stream stays in sync) and reported as -223; a
    malformed block header is fatal because its end cannot be known.
    """

    max_block_bytes: int = 64 << 20
    max_text_bytes: int = 4096
    _text: bytearray = field(default_factory=bytearray)
    _pieces: list[str | bytearray] = field(default_factory=list)
    _block: bytearray | None = None
    _block_filled: int = 0
    _skip: int = 0
    _overflow: str = ""
    _header: bytearray = field(default_factory=bytearray)
    _in_header: bool = False
    _broken: bool = False

    def feed(self, data: Buffer) -> list[ParsedCommand | FramingError]:
        out: list[ParsedCommand | FramingError] = []
        view, pos = memoryview(data).cast("B"), 0
        while pos < len(view) and not self._broken:
            if self._block is not None:
                take = min(len(self._block) - self._block_filled, len(view) - pos)
                self._block[self._block_filled : self._block_filled + take] = view[pos : pos + take]
                self._block_filled += take
                pos += take
                if self._block_filled == len(self._block):
                    self._pieces.append(self._block)
                    self._block = None
            elif self._skip:
                take = min(self._skip, len(view) - pos)
                self._skip -= take
                pos += take
            elif self._in_header:
                pos = self._feed_block_header(view, pos, out)
            else:
                pos = self._feed_text(view, pos, out)
        return out

    def _feed_text(self, view: memoryview, pos: int, out: list[ParsedCommand | FramingError]) -> int:
        chunk = bytes(view[pos : pos + self.max_text_bytes + 1])
        stops = [i for i in (chunk.find(b"\n"), chunk.find(b"#")) if i >= 0]
        end = min(stops) if stops else len(chunk)
        self._text += chunk[:end]
        if len(self._text) > self.max_text_bytes:
            self._text.clear()
            self._pieces.clear()
            self._broken = True
            message = f"command text over {self.max_text_bytes} bytes"
            out.append(FramingError(ERR_TOO_MUCH_DATA, message, fatal=True))
            return len(view)
        if not stops:
            return pos + end
        if chunk[end : end + 1] == b"#":
            self._pieces.append(self._text.decode("ascii", "replace"))
            self._text.clear()
            self._in_header = True
            self._header.clear()
            return pos + end + 1
        self._pieces.append(self._text.decode("ascii", "replace"))
        self._text.clear()
        event = self._assemble()
        if event is not None:
            out.append(event)
        return pos + end + 1

    def _feed_block_header(self, view: memoryview, pos: int, out: list[ParsedCommand | FramingError]) -> int:
        self._header.append(view[pos])
        digits, length_text = self._header[:1], self._header[1:]
        if not (digits.isdigit() and digits != b"0") or (length_text and not length_text.isdigit()):
            self._broken = True
            out.append(FramingError(ERR_COMMAND, f"malformed block header {bytes(self._header)!r}", True))
            return len(view)
        if len(self._header) == 1 + int(digits):
            self._in_header = False
            length = int(length_text)
            if length > self.max_block_bytes:
                self._skip = length
                self._overflow = f"block of {length} bytes over the {self.max_block_bytes}-byte limit"
                self._pieces.append(bytearray())
            elif length:
                self._block, self._block_filled = bytearray(length), 0
            else:
                self._pieces.append(bytearray())
        return pos + 1

    def _assemble(self) -> ParsedCommand | FramingError | None:
        pieces, self._pieces = self._pieces, []
        overflow, self._overflow = self._overflow, ""
        if overflow:
            return FramingError(ERR_TOO_MUCH_DATA, overflow)
        # Text pieces and blocks alternate; a block stands where its text slot is empty.
        marks = "".join(p if isinstance(p, str) else "\0" for p in pieces).strip()
        if not marks:
            return None
        header, _, rest = marks.partition(" ")
        blocks = iter(p for p in pieces if not isinstance(p, str))
        args: list[str | bytearray] = []
        for token in rest.split(",") if rest.strip() else []:
            token = token.strip()
            if "\0" in token and token != "\0":
                return FramingError(ERR_COMMAND, f"{header}: text mixed with a block in one argument")
            args.append(next(blocks) if token == "\0" else token)
        return ParsedCommand(header.upper(), args)


def parse_values(text: str, kinds: Sequence[type], command: str) -> list[float]:
    """Split a comma-separated value line into numbers, `ProtocolError` if it does not parse."""
    fields = text.split(",")
    if len(fields) != len(kinds):
        raise ProtocolError(f"reply to {command!r} has {len(fields)} fields, expected {len(kinds)}: {text!r}")
    try:
        return [kind(f) for kind, f in zip(kinds, fields, strict=True)]
    except ValueError:
        raise ProtocolError(f"unparseable reply to {command!r}: {text!r}") from None
