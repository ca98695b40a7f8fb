"""A station: one chip, opened from its stored resource string, and the clock it keeps.

Its life is `open_station` (link up), `check` (is this the registered board?), blocks
of work through `chip` and `read_block`, and `close` (safe state first, then the link),
on every exit path.

The schedule of a campaign runs on the *board's* clock (drift is measured against it),
so the worker asks the station for `clock_now_s()` and converts station seconds to wall
seconds with the clock rate it observes. A real board runs at rate 1; a simulated chip
may be accelerated (3600× turns 24 h into 24 s) or virtual (the worker advances it to
the next due job). Every kind is reached through the same driver over a real transport:
`sim://?rate=3600` starts an embedded simulated chip behind the real TCP server
(`hwctl.embedded_chip`, imported only when such a station is opened, so a process that
never opens one never loads the simulator).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from drivers.base import Identity
from drivers.chip import ChipDriver
from drivers.errors import DriverError
from drivers.transports.factory import open_transport

if TYPE_CHECKING:
    from hwctl.embedded_chip import EmbeddedChip

log = logging.getLogger(__name__)

SIM_SCHEME = "sim://"
DEFAULT_TIMEOUT_S = 30.0
# Below this many board seconds per wall second the clock counts as stopped (virtual).
_STOPPED_RATE = 1e-6


class StationError(ValueError):
    """The station's resource string cannot be opened as written."""


class StationIdentityError(StationError):
    """The board that answered is not the one the station was registered with."""


class Station:
    """An open chip driver plus the station clock; closing always leaves the board safe."""

    def __init__(
        self,
        name: str,
        chip: ChipDriver,
        *,
        advances_clock: bool = False,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.chip = chip
        self.advances_clock = advances_clock
        self._on_close = on_close
        self._origin_wall_s = time.monotonic()
        self._origin_board_s = chip.board_time_s()
        # (wall s, board s) of the last reading, replaced whole so other threads see a pair.
        self._last = (self._origin_wall_s, self._origin_board_s)
        self._closed = False

    # -- the station clock -------------------------------------------------------
    def clock_now_s(self) -> float:
        """Board time in seconds: what readback schedules and drift are measured against."""
        now_s = self.chip.board_time_s()
        self._last = (time.monotonic(), now_s)
        return now_s

    def clock_rate(self) -> float:
        """Board seconds per wall second, as observed since the station was opened."""
        last_wall_s, last_board_s = self._last
        wall_s = last_wall_s - self._origin_wall_s
        if wall_s <= 0.05:
            return 1.0  # too early to tell; 1 is the conservative (short-sleep) guess
        return (last_board_s - self._origin_board_s) / wall_s

    def estimated_now_s(self) -> float:
        """Board time extrapolated from the last reading, without a word to the board.

        For threads that must not use the link (the compute lane): its job times need
        not be exact, and a virtual clock only moves when the chip's owner moves it.
        """
        last_wall_s, last_board_s = self._last
        rate = 0.0 if self.advances_clock else self.clock_rate()
        return last_board_s + rate * (time.monotonic() - last_wall_s)

    def wall_delay_s(self, station_delay_s: float, cap_s: float) -> float:
        """How long to sleep (wall seconds, at most `cap_s`) for the board to move `station_delay_s`."""
        if station_delay_s <= 0:
            return 0.0
        rate = self.clock_rate()
        if rate < _STOPPED_RATE:
            return cap_s
        return min(station_delay_s / rate, cap_s)

    def advance_to_s(self, board_time_s: float) -> bool:
        """On a virtual-clock chip, jump the board to `board_time_s`; False where time is real."""
        if not self.advances_clock:
            return False
        delta_s = board_time_s - self.chip.board_time_s()
        if delta_s > 0:
            self.chip.advance_time_s(delta_s)
        return True

    def temperature_c(self) -> float:
        return self.chip.temperature_c()

    # -- check and work ------------------------------------------------------------
    def check(self, chip_serial: str) -> Identity:
        """The board's identity, refused unless its serial is the registered `chip_serial`."""
        identity = self.chip.identify()
        if identity.serial != chip_serial:
            raise StationIdentityError(
                f"station {self.name}: the board answers as serial {identity.serial!r}, "
                f"registered as {chip_serial!r}"
            )
        return identity

    def read_block(self, addresses: npt.NDArray[np.uint32]) -> tuple[float, npt.NDArray[np.float32]]:
        """One block read: the board time it started at and the conductances (µS)."""
        read_s = self.clock_now_s()
        return read_s, self.chip.read_block(addresses)

    # -- lifetime ------------------------------------------------------------------
    def close(self) -> None:
        """Safe state first, then the link, then any embedded chip; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.chip.safe_state()
        except DriverError as exc:
            # The board's watchdog grounds the lines when the host goes silent.
            log.error("station %s: could not put the board in its safe state: %s", self.name, exc)
            raise
        finally:
            try:
                self.chip.close()
            finally:
                if self._on_close is not None:
                    self._on_close()

    def __enter__(self) -> Station:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.close()
        except DriverError:
            if exc is None:
                raise  # otherwise the original error is the one to report; the failure is logged


def open_station(
    name: str,
    resource: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    advances_clock: bool = False,
) -> Station:
    """Open the chip named by `resource`: a VISA/serial/socket resource, or `sim://…`.

    `advances_clock` says the chip at the far end runs a virtual clock that the worker
    moves forward (a `hwctl sim-chip --clock virtual`); an embedded `sim://?clock=virtual`
    chip sets it itself.
    """
    embedded: EmbeddedChip | None = None
    if resource.startswith(SIM_SCHEME):
        from hwctl.embedded_chip import SimChipOptions, start_embedded_chip

        options = SimChipOptions.parse(resource)
        embedded = start_embedded_chip(options)
        resource, advances_clock = embedded.resource, advances_clock or options.virtual
    try:
        chip = ChipDriver(open_transport(resource, timeout_s=timeout_s))
    except BaseException:
        if embedded is not None:
            embedded.stop()
        raise
    return Station(name, chip, advances_clock=advances_clock, on_close=embedded.stop if embedded else None)
