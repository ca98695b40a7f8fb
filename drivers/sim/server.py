"""The simulated chip on a real socket: the board's line protocol over asyncio TCP.

`BoardSession` turns bytes into replies (one per command) over a `SimBoard`, so the
in-process transport and the TCP server share every rule; `SimChipServer` only moves
bytes. Errors are `ERR,<code>,"<msg>"` replies and entries on the SCPI error queue.

What connections share (`protocol.SHARING`): the board itself, the error queue, the
watchdog and the time of the last read are per board (`BoardCore`); framing state, the
stall timer and injected faults are per connection (`BoardSession`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drivers import protocol as p
from drivers.errors import BoardError
from drivers.sim.board import SimBoard

log = logging.getLogger(__name__)

ERROR_QUEUE_DEPTH = p.ERROR_QUEUE_DEPTH
GARBLED_REPLY = b"\xff\xfe\x00GARBLED\x07\n"
DEFAULT_MAX_BLOCK_BYTES = p.DEFAULT_MAX_BLOCK_BYTES
DEFAULT_STALL_TIMEOUT_S = p.DEFAULT_STALL_TIMEOUT_S
# Duplicate check: blocks listing under 1/64 of the devices are sorted, larger ones use a bitmap.
SORT_BELOW_FRACTION = 64


@dataclass
class Outgoing:
    """One reply to send: its parts, after `delay_s`; `close`: drop the link afterwards."""

    parts: list[p.Buffer]
    delay_s: float = 0.0
    close: bool = False


class BoardCore:
    """State shared by every connection to one board: error queue, watchdog, last read."""

    def __init__(self, board: SimBoard, watchdog_s: float | None = None) -> None:
        self.board = board
        self.watchdog_s = watchdog_s
        self.errors: collections.deque[tuple[int, str]] = collections.deque()
        self.last_read_time_s: float | None = None
        self._last_traffic = time.monotonic()
        self._watchdog_tripped = False
        self._seen: np.ndarray | None = None  # scratch bitmap for duplicate checks

    def first_duplicate(self, addresses: np.ndarray) -> int | None:
        """An address listed twice, or None. Addresses must be inside the array.

        Ascending blocks cost one comparison pass; a small block is sorted; a large one
        marks a per-board bitmap (one scatter), counts it and clears it (two passes over
        the devices, sequential): O(block + devices), ~4 ms for a shuffled whole chip.
        """
        if addresses.size < 2 or bool((addresses[1:] > addresses[:-1]).all()):
            return None
        n_devices = self.board.geometry().n_devices
        if addresses.size * SORT_BELOW_FRACTION < n_devices:
            ordered = np.sort(addresses)
            twice = ordered[1:][ordered[1:] == ordered[:-1]]
            return int(twice[0]) if twice.size else None
        if self._seen is None:
            self._seen = np.zeros(n_devices, bool)
        self._seen[addresses] = True
        distinct = int(np.count_nonzero(self._seen))
        self._seen.fill(False)
        if distinct == addresses.size:
            return None
        values, counts = np.unique(addresses, return_counts=True)
        return int(values[np.argmax(counts > 1)])

    def power_cycle(self) -> None:
        """The board loses power and comes back: what it keeps outside its devices (the
        error queue, the time of the last read) is gone; devices and clock as `SimBoard`
        keeps them (a state file) or blank."""
        self.board.power_cycle()
        self.errors.clear()
        self.last_read_time_s = None

    def push_error(self, code: int, message: str) -> None:
        if len(self.errors) >= ERROR_QUEUE_DEPTH:
            self.errors[-1] = (p.ERR_QUEUE_OVERFLOW, "Queue overflow")
        else:
            self.errors.append((code, message))

    def touch(self) -> None:
        self._last_traffic = time.monotonic()
        self._watchdog_tripped = False

    def check_watchdog(self) -> bool:
        """Safe state once after `watchdog_s` without host traffic; True when it trips."""
        if self.watchdog_s is None or self._watchdog_tripped:
            return False
        if time.monotonic() - self._last_traffic < self.watchdog_s:
            return False
        self._watchdog_tripped = True
        self.board.safe_state()
        message = f"watchdog: no host traffic for {self.watchdog_s} s, board in safe state"
        log.warning(message)
        self.push_error(p.ERR_WATCHDOG, message)
        return True


Handler = Callable[[list[Any]], list[p.Buffer]]


def _ok() -> list[p.Buffer]:
    return [b"OK\n"]


def _done(action: Callable[[], object]) -> list[p.Buffer]:
    action()
    return _ok()


def _line(*values: object) -> list[p.Buffer]:
    return [",".join(str(v) for v in values).encode("ascii") + b"\n"]


class BoardSession:
    """One host connection: frames commands, dispatches them, applies injected faults."""

    def __init__(self, core: BoardCore, max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES) -> None:
        self.core = core
        self.board = core.board
        # No command carries more than one value per device: a longer block is never meant.
        device_bytes = self.board.geometry().n_devices * p.ADDRESS_DTYPE.itemsize
        self.parser = p.CommandParser(max_block_bytes=min(max_block_bytes, device_bytes))
        self.closed = False
        self._disconnect_armed = False
        self._garble_next = False
        self._delay_s = 0.0
        self._handlers: dict[str, Handler] = {
            "*IDN?": lambda a: _line(*vars(self.board.identify()).values()),
            "*RST": self._rst,
            "*CLS": lambda a: _done(self.core.errors.clear),
            "SYST:ERR?": self._pop_error,
            "SYST:TIME?": lambda a: _line(repr(self.board.board_time_s())),
            "SYST:TEMP?": lambda a: _line(repr(self.board.temperature_c())),
            "SYST:LIM:AMPL": lambda a: _done(lambda: self.board.set_amplitude_limit_ua(a[0])),
            "SYST:LIM:AMPL?": lambda a: _line(repr(self.board.amplitude_limit_ua())),
            "SYST:LIM:AMPL:MAX?": lambda a: _line(repr(self.board.max_amplitude_ua())),
            "SAFE": lambda a: _done(self.board.safe_state),
            "ARR:SIZE?": lambda a: _line(*vars(self.board.geometry()).values()),
            "PULS:RES": self._reset,
            "PULS:SET": self._set,
            "MEAS:COND?": lambda a: self._read(a[0]),
            "MEAS:COND:REG?": self._read_region,
            "MEAS:TIME?": self._read_time,
            "SIM:TIME:ADV": lambda a: self._clock_call("advance", a[0]),
            "SIM:TIME:RATE": lambda a: self._clock_call("set_rate", a[0]),
            "SIM:FAUL:DISC": lambda a: _done(lambda: setattr(self, "_disconnect_armed", True)),
            "SIM:FAUL:DEL": lambda a: _done(lambda: setattr(self, "_delay_s", a[0])),
            "SIM:FAUL:GARB": lambda a: _done(lambda: setattr(self, "_garble_next", True)),
            "SIM:POW:CYC": lambda a: _done(self.core.power_cycle),
            "SIM:SAFE?": lambda a: _line(0 if self.board.pulser_enabled else 1),
        }
        assert set(self._handlers) == set(p.BY_HEADER), "server and command table diverge"

    # -- framing -------------------------------------------------------------------
    def feed(self, data: p.Buffer) -> list[Outgoing]:
        """Replies to every command completed by `data`, in order."""
        return list(self.replies(data))

    def replies(self, data: p.Buffer) -> Iterator[Outgoing]:
        """Replies to every command completed by `data`, in order, each command run only
        when its reply is asked for: the server sends one before running the next, so a
        host that pipelines many commands and reads nothing stalls on its own socket
        instead of holding up every other host while all of them run.

        A bug in framing costs this connection (+199, then closed: the parser's state can
        no longer be trusted), never the server; a bug in a command costs one +199 reply.
        """
        if self.closed:
            return
        if self._disconnect_armed:
            self.closed = True
            log.info("fault injection: dropping the connection mid-command")
            yield Outgoing([], close=True)
            return
        try:
            events = self.parser.feed(data)  # framing only: cheap, nothing run yet
            for event in events:
                yield self._reply(event)
        except Exception as exc:
            log.exception("internal error framing host input")
            self.closed = True
            reply = self.error_reply(p.ERR_INTERNAL, f"internal framing error: {exc}")
            yield Outgoing([reply], close=True)

    def _reply(self, event: p.ParsedCommand | p.FramingError) -> Outgoing:
        if isinstance(event, p.FramingError):
            reply = self.error_reply(event.code, event.message)
            self.closed = event.fatal
            return Outgoing([reply], self._delay_s, event.fatal)
        # Faults armed by this command act from the next reply on.
        garble, self._garble_next, delay_s = self._garble_next, False, self._delay_s
        parts = self._dispatch(event)
        return Outgoing([GARBLED_REPLY] if garble else parts, delay_s)

    def stalled(self, idle_s: float) -> Outgoing:
        """The reply to a command that stopped arriving: -365, then the link closes
        (where the host thinks the command ends cannot be known)."""
        self.closed = True
        message = f"command stalled: no byte for {idle_s:g} s in the middle of a command; closing"
        return Outgoing([self.error_reply(p.ERR_TIMEOUT, message)], close=True)

    def error_reply(self, code: int, message: str) -> bytes:
        """`ERR,<code>,"<message>"`, also queued for `SYST:ERR?`."""
        self.core.push_error(code, message)
        return p.encode_error(code, message)

    def _dispatch(self, command: p.ParsedCommand) -> list[p.Buffer]:
        spec = p.BY_HEADER.get(command.header)
        if spec is None:
            return [self.error_reply(p.ERR_UNDEFINED_HEADER, f"Undefined header {command.header[:40]!r}")]
        try:
            args = _convert_args(spec, command.args)
            self._refuse_duplicates(spec, args)
            return self._handlers[spec.header](args)
        except BoardError as exc:
            return [self.error_reply(exc.code, exc.message)]
        except ValueError as exc:
            return [self.error_reply(p.ERR_DATA_OUT_OF_RANGE, f"{spec.header}: {exc}")]
        except Exception as exc:  # a bug must cost one ERR reply, never the connection
            log.exception("internal error handling %s", spec.header)
            return [self.error_reply(p.ERR_INTERNAL, f"internal error in {spec.header}: {exc}")]

    def _refuse_duplicates(self, spec: p.Command, args: list[Any]) -> None:
        """Two pulses on one device in one command have no single meaning: refuse them."""
        n_devices = self.board.geometry().n_devices
        for kind, value in zip(spec.args, args, strict=True):
            if kind.kind is not p.Arg.ADDRESSES or not value.size or int(value.max()) >= n_devices:
                continue  # out-of-range addresses are the board's +101
            twice = self.core.first_duplicate(value)
            if twice is not None:
                message = f"{spec.header}: address {twice} listed more than once; nothing applied"
                raise BoardError(p.ERR_DUPLICATE_ADDRESS, message)

    # -- handlers --------------------------------------------------------------------
    def _rst(self, args: list[Any]) -> list[p.Buffer]:
        self.board.set_amplitude_limit_ua(self.board.max_amplitude_ua())
        self.board.safe_state()
        self._delay_s, self._garble_next, self._disconnect_armed = 0.0, False, False
        return _ok()

    def _pop_error(self, args: list[Any]) -> list[p.Buffer]:
        code, message = self.core.errors.popleft() if self.core.errors else p.NO_ERROR
        return [f"{code:+d},{p.quote(message)}\n".encode("ascii", "replace")]

    def _reset(self, args: list[Any]) -> list[p.Buffer]:
        addresses = args[0]
        self.board.reset(addresses)
        return _line("OK", addresses.size)

    def _set(self, args: list[Any]) -> list[p.Buffer]:
        addresses, amplitudes_ua = args
        self.board.set_pulse(addresses, amplitudes_ua)
        return _line("OK", addresses.size)

    def _read(self, addresses: np.ndarray) -> list[p.Buffer]:
        values = np.ascontiguousarray(self.board.read_block(addresses), dtype=p.VALUE_DTYPE)
        self.core.last_read_time_s = self.board.board_time_s()
        return [*p.encode_block(values), p.TERMINATOR]

    def _read_region(self, args: list[Any]) -> list[p.Buffer]:
        tile, r0, c0, nr, nc = args
        g = self.board.geometry()
        inside = 0 <= tile < g.tiles and 0 <= r0 < r0 + nr <= g.rows and 0 <= c0 < c0 + nc <= g.cols
        if not inside:
            raise BoardError(p.ERR_DATA_OUT_OF_RANGE, f"region {args} outside the array {g}")
        rows = np.arange(r0, r0 + nr, dtype=np.uint32)[:, None]
        cols = np.arange(c0, c0 + nc, dtype=np.uint32)[None, :]
        return self._read(((tile * g.rows + rows) * g.cols + cols).ravel())

    def _read_time(self, args: list[Any]) -> list[p.Buffer]:
        if self.core.last_read_time_s is None:
            raise BoardError(p.ERR_NO_READ_YET, "no conductance read yet")
        return _line(repr(self.core.last_read_time_s))

    def _clock_call(self, method: str, value: object) -> list[p.Buffer]:
        call = getattr(self.board.clock, method, None)
        if call is None:
            raise BoardError(p.ERR_SIM_ONLY, f"this board's clock has no {method}")
        call(value)
        return _ok()


def _convert_args(spec: p.Command, raw: list[str | bytearray]) -> list[Any]:
    """Raw tokens → typed values per the command table; blocks become numpy views.

    A number must parse strictly (-100) and lie within its table range, finite (-222).
    """
    if len(raw) != len(spec.args):
        kinds = ", ".join(a.describe() for a in spec.args) or "none"
        message = f"{spec.header} takes {len(spec.args)} argument(s) ({kinds}), got {len(raw)}"
        raise BoardError(p.ERR_COMMAND, message)
    values: list[Any] = []
    for param, token in zip(spec.args, raw, strict=True):
        if param.is_block != isinstance(token, bytearray):
            got = "text" if param.is_block else "a block"
            raise BoardError(p.ERR_COMMAND, f"{spec.header}: expected {param.kind.value}, got {got}")
        if isinstance(token, bytearray):
            dtype = p.ADDRESS_DTYPE if param.kind is p.Arg.ADDRESSES else p.VALUE_DTYPE
            if len(token) % dtype.itemsize:
                message = f"{spec.header}: a {len(token)}-byte block is not a whole number of {dtype}"
                raise BoardError(p.ERR_COMMAND, message)
            values.append(np.frombuffer(token, dtype))
            continue
        try:
            value = p.parse_number(token, integral=param.kind is p.Arg.INTEGER)
        except ValueError as exc:
            raise BoardError(p.ERR_COMMAND, f"{spec.header}: {exc}") from None
        refusal = param.check(value)
        if refusal:
            raise BoardError(p.ERR_DATA_OUT_OF_RANGE, f"{spec.header}: {refusal}")
        values.append(value)
    return values


@dataclass
class SimChipServer:
    """asyncio TCP server speaking the board protocol for one `SimBoard`."""

    board: SimBoard
    host: str = "127.0.0.1"
    port: int = 5025
    watchdog_s: float | None = 60.0
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    core: BoardCore = field(init=False)
    _server: asyncio.Server | None = field(default=None, init=False)
    _connections: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _watchdog_task: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.core = BoardCore(self.board, self.watchdog_s)

    @property
    def resource(self) -> str:
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.watchdog_s is not None:
            self._watchdog_task = asyncio.get_running_loop().create_task(self._watchdog())
        log.info("sim chip listening on %s", self.resource)

    async def close(self) -> None:
        """Stop listening and drop every connection (what a power cycle looks like)."""
        if self._watchdog_task is not None:
            self._watchdog_task.cancel()
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _watchdog(self) -> None:
        assert self.watchdog_s is not None
        while True:
            self.core.check_watchdog()
            await asyncio.sleep(min(1.0, self.watchdog_s / 4))

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = BoardSession(self.core, self.max_block_bytes)
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        log.info("host connected from %s", peer)
        try:
            while True:
                idle_s = self.stall_timeout_s if session.parser.mid_command else None
                replies: Iterable[Outgoing]
                try:
                    data = await asyncio.wait_for(reader.read(1 << 20), idle_s)
                except TimeoutError:
                    assert idle_s is not None
                    log.warning("host %s stalled mid-command for %g s: closing", peer, idle_s)
                    replies = [session.stalled(idle_s)]
                else:
                    if not data:
                        return
                    self.core.touch()
                    replies = session.replies(data)
                for out in replies:
                    if out.delay_s:
                        await asyncio.sleep(out.delay_s)
                    writer.writelines(out.parts)
                    await writer.drain()
                    if out.close or writer.is_closing():
                        return
                    await asyncio.sleep(0)  # other hosts' commands between this host's
        except ConnectionError as exc:
            log.info("host %s dropped the link: %s", peer, exc)
        except asyncio.CancelledError:
            # The server is closing (a power cycle). End quietly: Python 3.11's stream
            # callback logs a cancelled connection task as an error with a traceback.
            log.info("host %s cut off: the simulated chip is shutting down", peer)
        finally:
            self._connections.discard(task)
            writer.close()
            log.info("host %s disconnected", peer)


class ServerThread:
    """A `SimChipServer` on its own event loop in a daemon thread (tests, notebooks)."""

    def __init__(self, server: SimChipServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(server.start())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"sim-chip-{id(self)}", daemon=True)
        self._thread.start()
        if not started.wait(10.0):
            raise RuntimeError("simulated chip server did not start within 10 s")

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def resource(self) -> str:
        return self.server.resource

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(10.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        self._loop.close()


def serve_in_thread(
    board: SimBoard,
    port: int = 0,
    host: str = "127.0.0.1",
    watchdog_s: float | None = None,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
) -> ServerThread:
    """Serve `board` on `host:port` (0: an ephemeral port) in the background."""
    return ServerThread(SimChipServer(board, host, port, watchdog_s, stall_timeout_s=stall_timeout_s))
