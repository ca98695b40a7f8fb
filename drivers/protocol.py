"""The board's wire protocol: the one command table plus its codec.

The simulated chip's server and the host driver both read `COMMANDS`, so the protocol
cannot drift between them, and `docs/protocol.md` is rendered from it. Framing: ASCII
commands ending in `\\n`, bulk data as IEEE-488.2 definite-length blocks `#<d><len><bytes>`
(little-endian uint32 addresses, float32 µS / µA), exactly one reply per command.
"""

from __future__ import annotations

import enum
import math
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
ERR_TIMEOUT = -365
ERR_SIM_ONLY = 100
ERR_BAD_ADDRESS = 101
ERR_WATCHDOG = 102
ERR_NO_READ_YET = 103
ERR_DUPLICATE_ADDRESS = 104
ERR_INTERNAL = 199
NO_ERROR = (0, "No error")
ERRORS: tuple[tuple[int, str], ...] = (
    (ERR_COMMAND, "Command error: wrong argument count or kind, a number that does not parse, "
                  "malformed block"),
    (ERR_UNDEFINED_HEADER, "Undefined header"),
    (ERR_DATA_OUT_OF_RANGE, "Data out of range: a number outside its range or not finite, an amplitude over "
                            "the limit, a region outside the array"),
    (ERR_TOO_MUCH_DATA, "Too much data: a block over the limit, more blocks than any command takes, command "
                        "text over the limit"),
    (ERR_QUEUE_OVERFLOW, "Error queue overflow (replaces the newest entry)"),
    (ERR_TIMEOUT, "Time out: a command stalled mid-way (the connection then closes)"),
    (ERR_SIM_ONLY, "Not supported by this board (e.g. a real-time clock cannot be advanced)"),
    (ERR_BAD_ADDRESS, "Address beyond the array"),
    (ERR_WATCHDOG, "Watchdog tripped: no host traffic, board in safe state"),
    (ERR_NO_READ_YET, "`MEAS:TIME?` before any read"),
    (ERR_DUPLICATE_ADDRESS, "The same address twice in one command (nothing applied, nothing read)"),
    (ERR_INTERNAL, "Internal error in the board (a bug; the link stays usable)"),
)


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


BLOCK_ARGS = (Arg.ADDRESSES, Arg.AMPLITUDES_UA)


@dataclass(frozen=True)
class Param:
    """One argument of a command. Numbers carry their range: `low`..`high` (inclusive,
    `low` exclusive when `low_open`), always finite; the board may narrow it further
    (e.g. the amplitude limit to its hardware maximum, a region to its geometry)."""

    kind: Arg
    name: str = ""
    low: float = 0.0
    high: float = 0.0
    low_open: bool = False

    @property
    def is_block(self) -> bool:
        return self.kind in BLOCK_ARGS

    def range_text(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def describe(self) -> str:
        if self.is_block:
            return self.kind.value
        return f"{self.kind.value} `<{self.name}>` ∈ {self.range_text()}"

    def check(self, value: float) -> str:
        """Why `value` is refused, or "" when it is in range."""
        if not math.isfinite(value):
            return f"<{self.name}> {value} is not finite"
        too_low = value <= self.low if self.low_open else value < self.low
        if too_low or value > self.high:
            return f"<{self.name}> {value:g} outside {self.range_text()}"
        return ""


def number(name: str, low: float, high: float, low_open: bool = False) -> Param:
    return Param(Arg.NUMBER, name, low, high, low_open)


def integer(name: str, low: int, high: int) -> Param:
    return Param(Arg.INTEGER, name, low, high)


@dataclass(frozen=True)
class Command:
    header: str
    args: tuple[Param, ...]
    reply: Reply
    summary: str
    sim_only: bool = False


def _c(header: str, args: tuple[Param, ...], reply: Reply, summary: str, sim_only: bool = False) -> Command:
    return Command(header, args, reply, summary, sim_only)


# Wire ranges: what any board accepts on the wire; beyond them a value is never meant.
MAX_AMPLITUDE_LIMIT_UA = 10_000.0  # 10 mA: far above any PCM programming current
MAX_INDEX = (1 << 16) - 1  # tiles, rows and columns are addressed by 16-bit indices
MAX_TIME_ADVANCE_S = 1e9  # ≈ 31.7 years in one jump
MAX_CLOCK_RATE = 1e6
MAX_REPLY_DELAY_S = 3600.0
A, AMP = Param(Arg.ADDRESSES), Param(Arg.AMPLITUDES_UA)
COMMANDS: tuple[Command, ...] = (
    _c("*IDN?", (), Reply.VALUE, "Identity: `<vendor>,<model>,<serial>,<firmware>`."),
    _c("*RST", (), Reply.OK, "Session limit back to the hardware maximum, faults cleared, safe state."),
    _c("*CLS", (), Reply.OK, "Clear the error queue."),
    _c("SYST:ERR?", (), Reply.VALUE, 'Pop the oldest queued error: `<code>,"<message>"`; `+0,"No error"`.'),
    _c("SYST:TIME?", (), Reply.VALUE, "Board clock in seconds."),
    _c("SYST:TEMP?", (), Reply.VALUE, "Chip temperature in °C."),
    _c(
        "SYST:LIM:AMPL",
        (number("µA", 0.0, MAX_AMPLITUDE_LIMIT_UA, low_open=True),),
        Reply.OK,
        "Set the session amplitude limit (µA); -222 above the hardware maximum.",
    ),
    _c("SYST:LIM:AMPL?", (), Reply.VALUE, "Session amplitude limit in µA."),
    _c("SYST:LIM:AMPL:MAX?", (), Reply.VALUE, "Hardware amplitude maximum in µA (read-only)."),
    _c("SAFE", (), Reply.OK, "Ground all lines, pulser off (the next pulse re-enables it)."),
    _c("ARR:SIZE?", (), Reply.VALUE, "Geometry `<tiles>,<rows>,<cols>`."),
    _c("PULS:RES", (A,), Reply.COUNT, "RESET the listed devices."),
    _c(
        "PULS:SET",
        (A, AMP),
        Reply.COUNT,
        "One SET pulse per device at its own amplitude; any amplitude over the limit rejects "
        "the whole command (-222), nothing applied, nothing clipped.",
    ),
    _c("MEAS:COND?", (A,), Reply.BLOCK, "Read the listed devices: float32 conductances in µS."),
    _c(
        "MEAS:COND:REG?",
        (
            integer("tile", 0, MAX_INDEX),
            integer("r0", 0, MAX_INDEX),
            integer("c0", 0, MAX_INDEX),
            integer("nr", 1, MAX_INDEX + 1),
            integer("nc", 1, MAX_INDEX + 1),
        ),
        Reply.BLOCK,
        "Read rectangle `<tile>,<r0>,<c0>,<nr>,<nc>` row-major; -222 if it leaves the array.",
    ),
    _c("MEAS:TIME?", (), Reply.VALUE, "Board time (s) of the last conductance read."),
    _c("SIM:TIME:ADV", (number("s", 0.0, MAX_TIME_ADVANCE_S),), Reply.OK,
       "Advance the board clock by `<s>` seconds.", True),
    _c("SIM:TIME:RATE", (number("x", 0.0, MAX_CLOCK_RATE, low_open=True),), Reply.OK,
       "Accelerate an accelerated clock to `<x>`× real time.", True),
    _c("SIM:FAUL:DISC", (), Reply.OK, "Reply, then drop the connection when the next command arrives.", True),
    _c("SIM:FAUL:DEL", (number("s", 0.0, MAX_REPLY_DELAY_S),), Reply.OK,
       "Delay later replies on this connection by `<s>` s (0 clears).", True),
    _c("SIM:FAUL:GARB", (), Reply.OK, "Replace the next reply on this connection by a garbled line.", True),
    _c("SIM:POW:CYC", (), Reply.OK,
       "Power-cycle: volatile state lost unless the chip has a state file; clock restarts at 0 or "
       "continues. The error queue and the time of the last read are cleared.", True),
    _c("SIM:SAFE?", (), Reply.VALUE,
       "Whether the board is in its safe state: `1` (lines grounded, pulser off) or `0`.", True),
)
BY_HEADER: dict[str, Command] = {command.header: command for command in COMMANDS}


# Limits of one board, and what its connections share.
ERROR_QUEUE_DEPTH = 32
DEFAULT_MAX_BLOCK_BYTES = 64 << 20
DEFAULT_STALL_TIMEOUT_S = 10.0
SHARING: tuple[tuple[str, str], ...] = (
    ("devices, clock, session amplitude limit, pulser state", "the board: every connection"),
    (f"error queue (depth {ERROR_QUEUE_DEPTH}), watchdog, time of the last read",
     "the board: every connection"),
    ("framing state, stall timer", "each connection"),
    ("injected faults (`SIM:FAUL:DISC`, `SIM:FAUL:DEL`, `SIM:FAUL:GARB`)", "each connection"),
)


def render_markdown_table() -> str:
    """The command table as Markdown; docs/protocol.md embeds exactly this text."""
    rows = ["| Command | Arguments | Reply | Sim only | Meaning |", "|---|---|---|---|---|"]
    for c in COMMANDS:
        args = ", ".join(a.describe() for a in c.args) or "—"
        sim = "yes" if c.sim_only else ""
        rows.append(f"| `{c.header}` | {args} | {c.reply.value} | {sim} | {c.summary} |")
    return "\n".join(rows) + "\n"


def render_markdown_errors() -> str:
    """The error codes as Markdown; docs/protocol.md embeds exactly this text."""
    rows = ["| Code | Meaning |", "|---|---|"] + [f"| `{code:+d}` | {meaning} |" for code, meaning in ERRORS]
    return "\n".join(rows) + "\n"


def render_markdown_limits() -> str:
    """Size limits and what connections share, as Markdown (embedded in docs/protocol.md)."""
    rows = [
        "| Limit | Value | Beyond it |",
        "|---|---|---|",
        f"| command text, block headers included | {MAX_TEXT_BYTES} bytes | `{ERR_TOO_MUCH_DATA:+d}`, "
        "connection closed |",
        f"| one block | min({DEFAULT_MAX_BLOCK_BYTES >> 20} MiB, devices × 4 bytes) | skipped by its "
        f"declared length, `{ERR_TOO_MUCH_DATA:+d}` |",
        f"| blocks in one command | {MAX_BLOCKS} | skipped, `{ERR_TOO_MUCH_DATA:+d}` |",
        f"| a number | {MAX_NUMBER_CHARS} characters, decimal, finite, in its range (command table) | "
        f"`{ERR_COMMAND:+d}` if it does not parse, `{ERR_DATA_OUT_OF_RANGE:+d}` out of range |",
        f"| silence in the middle of a command | {DEFAULT_STALL_TIMEOUT_S:g} s (server setting "
        f"`stall_timeout_s`) | `{ERR_TIMEOUT:+d}`, connection closed |",
        f"| error queue | {ERROR_QUEUE_DEPTH} entries | newest replaced by `{ERR_QUEUE_OVERFLOW:+d}` |",
        "",
        "| State | Held by |",
        "|---|---|",
        *(f"| {what} | {holder} |" for what, holder in SHARING),
    ]
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


# -- numbers ------------------------------------------------------------------------------
# Decimal numbers only: no NaN, no infinities, no `_` separators, no surrounding text.
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
MAX_NUMBER_CHARS = 40


def parse_number(text: str, integral: bool) -> float:
    """A strict decimal (or integer) token; `ValueError` saying why it is not one."""
    token = text.strip()
    grammar = _INTEGER if integral else _DECIMAL
    if len(token) > MAX_NUMBER_CHARS or not grammar.fullmatch(token):
        raise ValueError(f"{token[:20]!r} is not {'an integer' if integral else 'a decimal number'}")
    return int(token) if integral else float(token)


def parse_values(text: str, kinds: Sequence[type], command: str) -> list[float]:
    """Split a comma-separated reply line into finite numbers, `ProtocolError` otherwise."""
    fields = text.split(",")
    if len(fields) != len(kinds):
        raise ProtocolError(f"reply to {command!r} has {len(fields)} fields, expected {len(kinds)}: {text!r}")
    try:
        values = [parse_number(f, kind is int) for kind, f in zip(kinds, fields, strict=True)]
    except ValueError:
        raise ProtocolError(f"unparseable reply to {command!r}: {text[:80]!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ProtocolError(f"non-finite value in the reply to {command!r}: {text[:80]!r}")
    return values


# -- incremental command parser (server side) -------------------------------------------
MAX_TEXT_BYTES = 4096
MAX_BLOCKS = max(sum(a.is_block for a in c.args) for c in COMMANDS)


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

    Text is gathered up to `\\n` or a block start `#`; a block's body is appended as its
    bytes arrive (nothing is reserved for a declared length), so `\\n` inside blocks is
    harmless and a header promising a gigabyte costs nothing until the bytes come. A
    block over `max_block_bytes`, or beyond the `MAX_BLOCKS` any command takes, is skipped
    by its declared length (the stream stays in sync) and reported as -223. A malformed
    block header is fatal because its end cannot be known; so is command text (block
    headers included) over `max_text_bytes`.
    """

    max_block_bytes: int = 64 << 20
    max_text_bytes: int = MAX_TEXT_BYTES
    _text: bytearray = field(default_factory=bytearray)
    _text_used: int = 0
    _pieces: list[str | bytearray] = field(default_factory=list)
    _block: bytearray | None = None
    _block_length: int = 0
    _skip: int = 0
    _overflow: str = ""
    _header: bytearray = field(default_factory=bytearray)
    _in_header: bool = False
    _broken: bool = False

    @property
    def mid_command(self) -> bool:
        """True while a command has started but not ended (the stall timer runs)."""
        started = self._text.strip() or self._pieces or self._in_header
        return not self._broken and bool(started or self._block is not None or self._skip)

    def feed(self, data: Buffer) -> list[ParsedCommand | FramingError]:
        out: list[ParsedCommand | FramingError] = []
        view, pos = memoryview(data).cast("B"), 0
        while pos < len(view) and not self._broken:
            if self._block is not None:
                take = min(self._block_length - len(self._block), len(view) - pos)
                self._block += view[pos : pos + take]
                pos += take
                if len(self._block) == self._block_length:
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

    def _fail(self, out: list[ParsedCommand | FramingError], code: int, message: str) -> None:
        self._text.clear()
        self._pieces.clear()
        self._broken = True
        out.append(FramingError(code, message, fatal=True))

    def _feed_text(self, view: memoryview, pos: int, out: list[ParsedCommand | FramingError]) -> int:
        chunk = bytes(view[pos : pos + self.max_text_bytes + 1])
        stops = [i for i in (chunk.find(b"\n"), chunk.find(b"#")) if i >= 0]
        end = min(stops) if stops else len(chunk)
        self._text += chunk[:end]
        if self._text_used + len(self._text) > self.max_text_bytes:
            self._fail(out, ERR_TOO_MUCH_DATA, f"command text over {self.max_text_bytes} bytes")
            return len(view)
        if not stops:
            return pos + end
        self._pieces.append(self._text.decode("ascii", "replace"))
        self._text_used += len(self._text)
        self._text.clear()
        if chunk[end : end + 1] == b"#":
            self._in_header = True
            self._header.clear()
            return pos + end + 1
        self._text_used = 0
        event = self._assemble()
        if event is not None:
            out.append(event)
        return pos + end + 1

    def _feed_block_header(self, view: memoryview, pos: int, out: list[ParsedCommand | FramingError]) -> int:
        self._header.append(view[pos])
        self._text_used += 1
        digits, length_text = self._header[:1], self._header[1:]
        if not (digits.isdigit() and digits != b"0") or (length_text and not length_text.isdigit()):
            self._fail(out, ERR_COMMAND, f"malformed block header {bytes(self._header)!r}")
            return len(view)
        if self._text_used > self.max_text_bytes:
            self._fail(out, ERR_TOO_MUCH_DATA, f"command text over {self.max_text_bytes} bytes")
            return len(view)
        if len(self._header) == 1 + int(digits):
            self._in_header = False
            length = int(length_text)
            blocks = sum(1 for piece in self._pieces if not isinstance(piece, str))
            if length > self.max_block_bytes or blocks >= MAX_BLOCKS:
                self._skip = length
                self._overflow = self._overflow or (
                    f"block of {length} bytes over the {self.max_block_bytes}-byte limit"
                    if length > self.max_block_bytes
                    else f"more than {MAX_BLOCKS} blocks in one command"
                )
                self._pieces.append(bytearray())
            elif length:
                self._block, self._block_length = bytearray(), length
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
