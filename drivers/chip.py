"""The host-side chip driver: typed methods over the board protocol and any transport.

`ChipDriver` implements `drivers.base.Chip`. It refuses over-limit amplitudes before
sending (the board refuses them too), logs every command at DEBUG without binary
payloads, and as a context manager always leaves the board in its safe state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import TracebackType

import numpy as np

from drivers import protocol as p
from drivers.base import Addresses, Float32s, Geometry, Identity
from drivers.errors import DesyncError, DriverError, LimitError, LinkError, ProtocolError
from drivers.transports.base import MAX_LINE_BYTES, Response, Transport

log = logging.getLogger(__name__)

DEFAULT_MAX_BLOCK_DEVICES = 1 << 21


class ChipDriver:
    """A PCM test chip behind `transport`; every method is one or a few commands."""

    def __init__(self, transport: Transport, max_block_devices: int = DEFAULT_MAX_BLOCK_DEVICES) -> None:
        self.transport = transport
        self.max_block_devices = max_block_devices
        self._limit_ua: float | None = None
        self._link_down: str = ""

    # -- command plumbing --------------------------------------------------------------
    def _query(
        self, header: str, *args: str | float | int | np.ndarray, block_bytes: int = MAX_LINE_BYTES
    ) -> Response:
        """Send one command, read its one reply; `block_bytes`: the largest block it may be."""
        resource = self.transport.resource
        if self._link_down:
            raise LinkError(f"{resource}: link down since {self._link_down}; open a new driver")
        if log.isEnabledFor(logging.DEBUG):
            shown = [f"<{a.size}×{a.dtype}>" if isinstance(a, np.ndarray) else repr(a) for a in args]
            log.debug("%s → %s %s", resource, header, ",".join(shown))
        try:
            self.transport.write(p.encode_command(header, *args))
            response = self.transport.read_response(block_bytes)
        except (LinkError, DesyncError) as exc:  # either way, where the next reply starts is unknown
            self._link_down = f"{header}: {exc}"
            raise
        if log.isEnabledFor(logging.DEBUG):
            payload = response.payload
            shown_reply = f"<{len(payload)}-byte block>" if response.is_block else payload[:80]
            log.debug("%s ← %s", resource, shown_reply)
        return response

    def _line(self, header: str, *args: str | float | int | np.ndarray) -> str:
        response = self._query(header, *args)
        if response.is_block:
            raise ProtocolError(f"{header}: expected a line, got a {len(response.payload)}-byte block")
        return p.check_line(response.payload, header)

    def _ok(self, header: str, *args: str | float | int | np.ndarray, count: int | None = None) -> None:
        reply = self._line(header, *args)
        expected = "OK" if count is None else f"OK,{count}"
        if reply != expected:
            raise ProtocolError(f"{header}: expected {expected!r}, got {reply[:40]!r}")

    def _number(self, header: str) -> float:
        return p.parse_values(self._line(header), [float], header)[0]

    def _block(self, header: str, *args: str | float | int | np.ndarray, n_values: int) -> Float32s:
        n_bytes = n_values * p.VALUE_DTYPE.itemsize
        response = self._query(header, *args, block_bytes=max(n_bytes, MAX_LINE_BYTES))
        if not response.is_block:
            p.check_line(response.payload, header)  # raises BoardError for an ERR reply
            raise ProtocolError(f"{header}: expected a block, got {response.payload[:40]!r}")
        if len(response.payload) != n_values * p.VALUE_DTYPE.itemsize:
            raise ProtocolError(f"{header}: {len(response.payload)}-byte block for {n_values} float32 values")
        return np.frombuffer(response.payload, p.VALUE_DTYPE).astype(np.float32, copy=False)

    def _chunks(self, addresses: Addresses) -> Iterator[slice]:
        for start in range(0, max(addresses.size, 1), self.max_block_devices):
            yield slice(start, start + self.max_block_devices)

    # -- identity, geometry, status -----------------------------------------------------
    def identify(self) -> Identity:
        fields = self._line("*IDN?").split(",")
        if len(fields) != 4 or not all(fields):
            raise ProtocolError(f"*IDN? reply has {len(fields)} fields, expected 4: {fields}")
        return Identity(*fields)

    def geometry(self) -> Geometry:
        reply = self._line("ARR:SIZE?")
        tiles, rows, cols = (int(v) for v in p.parse_values(reply, [int] * 3, "ARR:SIZE?"))
        if min(tiles, rows, cols) <= 0 or tiles * rows * cols > 1 << 32:
            raise ProtocolError(f"ARR:SIZE?: {reply!r} is no array of up to 2**32 devices")
        return Geometry(tiles, rows, cols)

    def board_time_s(self) -> float:
        return self._number("SYST:TIME?")

    def temperature_c(self) -> float:
        return self._number("SYST:TEMP?")

    def last_read_time_s(self) -> float:
        """Board time of the most recent conductance read."""
        return self._number("MEAS:TIME?")

    def errors(self) -> list[tuple[int, str]]:
        """Drain the board's SCPI error queue, oldest first."""
        drained: list[tuple[int, str]] = []
        while True:
            code_text, comma, message = self._line("SYST:ERR?").partition(",")
            code = int(p.parse_values(code_text, [int], "SYST:ERR?")[0])
            if not comma:
                raise ProtocolError(f"SYST:ERR?: no message after code {code_text[:20]!r}")
            if code == 0:
                return drained
            drained.append((code, p.unquote(message)))

    def clear_errors(self) -> None:
        self._ok("*CLS")

    # -- limits and safety --------------------------------------------------------------
    def max_amplitude_ua(self) -> float:
        return self._number("SYST:LIM:AMPL:MAX?")

    def amplitude_limit_ua(self) -> float:
        self._limit_ua = self._number("SYST:LIM:AMPL?")
        return self._limit_ua

    def set_amplitude_limit_ua(self, limit_ua: float) -> None:
        self._ok("SYST:LIM:AMPL", float(limit_ua))
        self._limit_ua = float(limit_ua)

    def safe_state(self) -> None:
        self._ok("SAFE")

    def advance_time_s(self, seconds: float) -> None:
        """Jump the simulated board's clock (real boards answer an error)."""
        self._ok("SIM:TIME:ADV", float(seconds))

    # -- pulses and reads ---------------------------------------------------------------
    def reset(self, addresses: Addresses) -> None:
        addresses = _as_addresses(addresses)
        for part in self._chunks(addresses):
            self._ok("PULS:RES", addresses[part], count=addresses[part].size)

    def set_pulse(self, addresses: Addresses, amplitudes_ua: Float32s) -> None:
        addresses = _as_addresses(addresses)
        amplitudes_ua = np.ascontiguousarray(amplitudes_ua, dtype=p.VALUE_DTYPE)
        if addresses.shape != amplitudes_ua.shape:
            raise ValueError(f"{addresses.size} addresses but {amplitudes_ua.size} amplitudes")
        self._check_amplitudes(addresses, amplitudes_ua)
        for part in self._chunks(addresses):
            self._ok("PULS:SET", addresses[part], amplitudes_ua[part], count=addresses[part].size)

    def read_block(self, addresses: Addresses) -> Float32s:
        addresses = _as_addresses(addresses)
        parts = [
            self._block("MEAS:COND?", addresses[part], n_values=addresses[part].size)
            for part in self._chunks(addresses)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read_region(self, tile: int, row0: int, col0: int, n_rows: int, n_cols: int) -> Float32s:
        """A rectangle of one tile, shape (n_rows, n_cols)."""
        if min(n_rows, n_cols) <= 0:
            raise ValueError(f"a region of {n_rows}×{n_cols} devices is empty")
        values = self._block("MEAS:COND:REG?", tile, row0, col0, n_rows, n_cols, n_values=n_rows * n_cols)
        return values.reshape(n_rows, n_cols)

    def _check_amplitudes(self, addresses: Addresses, amplitudes_ua: Float32s) -> None:
        limit_ua = self._limit_ua if self._limit_ua is not None else self.amplitude_limit_ua()
        bad = ~np.isfinite(amplitudes_ua) | (amplitudes_ua < 0) | (amplitudes_ua > limit_ua)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise LimitError(
                f"{int(bad.sum())} amplitude(s) outside [0, {limit_ua}] uA, first {amplitudes_ua[first]} uA "
                f"at device {addresses[first]}; nothing sent, nothing applied"
            )

    # -- lifetime ---------------------------------------------------------------------
    def abort(self) -> None:
        """From any thread (a signal handler): the command in flight fails now with `LinkError`.

        The link counts as down afterwards, so `__exit__` sends nothing; the board's
        watchdog grounds the lines, or a new driver sends `SAFE`.
        """
        self._link_down = self._link_down or "aborted by the host"
        self.transport.abort()

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> ChipDriver:
        return self

    @property
    def link_down_since(self) -> str:
        """Why the link was declared down ("" while it is up): nothing more is sent on it."""
        return self._link_down

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Safe state whenever the link is alive; a dead link's own error is the one that counts."""
        resource = self.transport.resource
        try:
            if self._link_down:
                # Nothing reaches the board; its watchdog grounds the lines. The caller already
                # has the LinkError that took the link down, so a second report would only confuse.
                log.debug("%s: safe state not sent, link down since %s", resource, self._link_down)
                if exc is None:
                    raise LinkError(f"{resource}: safe state not sent, link down since {self._link_down}")
                return
            try:
                self.safe_state()
            except DriverError as failure:
                # The link was up until now: worth an operator's attention, but never mask `exc`.
                log.error("could not put %s in its safe state: %s", resource, failure)
                if exc is None:
                    raise
        finally:
            self.close()


def _as_addresses(addresses: Addresses) -> Addresses:
    return np.ascontiguousarray(addresses, dtype=p.ADDRESS_DTYPE).ravel()
