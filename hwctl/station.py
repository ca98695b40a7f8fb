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
from dataclasses import dataclass
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
    from hwctl.store.campaign import BoardReference

log = logging.getLogger(__name__)

SIM_SCHEME = "sim://"
# Longest silence on the link while a reply is due (the transport's per-chunk limit): a
# dead link is seen within it, not after a whole long read.
DEFAULT_TIMEOUT_S = 5.0
# State fingerprint (pcm-model.md §3-4): a programmed device's conductance only drifts
# down, G(t) = G(t_ref)·(t/t_ref)^−ν with ν ≤ μ_ν + 3σ_ν < NU_MAX, plus read noise; a
# re-read outside [RATIO_FLOOR·(t/t_ref)^−NU_MAX, RATIO_CEILING]×G(t_ref) is not the same device state.
FINGERPRINT_DEVICES = 256
FINGERPRINT_MIN_G_US = 2.0  # below, read noise swamps the check
FINGERPRINT_MIN_AGE_S = 20.0  # ages are floored here (the model's G(t0) settles by then)
NU_MAX = 0.25
RATIO_FLOOR = 0.7
RATIO_CEILING = 1.3
MIN_FINGERPRINT_DEVICES = 16
# Below this many board seconds per wall second the clock counts as stopped (virtual).
_STOPPED_RATE = 1e-6


class StationError(ValueError):
    """The station's resource string cannot be opened as written."""


class StationIdentityError(StationError):
    """The board that answered is not the one the station was registered with."""


@dataclass(frozen=True)
class Continuity:
    """What a (re)connection found about the board's clock and devices: the evidence an
    operator gets when the board lost its state."""

    board_time_s: float
    last_seen_s: float | None  # the latest board time the service recorded for this station
    sampled: int  # programmed devices re-read
    outside: int  # of them, outside the drift/noise band of their last stored value
    median_ratio: float | None  # re-read / stored, over the sample

    @property
    def clock_went_back(self) -> bool:
        return self.last_seen_s is not None and self.board_time_s < self.last_seen_s

    @property
    def devices_lost(self) -> bool:
        return self.sampled >= MIN_FINGERPRINT_DEVICES and 2 * self.outside > self.sampled

    @property
    def lost(self) -> bool:
        return self.clock_went_back or self.devices_lost

    def evidence(self) -> str:
        clock = f"board clock {self.board_time_s:.3f} s"
        if self.last_seen_s is not None:
            went_back = ": went backwards" if self.clock_went_back else ""
            clock += f" (last recorded {self.last_seen_s:.3f} s{went_back})"
        if not self.sampled:
            return clock + "; no programmed devices to compare"
        return (
            f"{clock}; {self.outside}/{self.sampled} re-read devices outside the drift/noise band of their "
            f"last stored conductance (median re-read/stored {self.median_ratio:.3g})"
        )


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

    def continuity(self, last_seen_s: float | None, reference: BoardReference | None) -> Continuity:
        """Compare the board with what the service last recorded: its clock must not have
        gone back, a sample of the programmed devices must read as drifted from their last
        stored values (not as blank or as other devices)."""
        now_s = self.clock_now_s()
        if reference is None:
            return Continuity(now_s, last_seen_s, 0, 0, None)
        eligible = np.flatnonzero(reference.g_us >= FINGERPRINT_MIN_G_US)
        if eligible.size == 0:
            return Continuity(now_s, last_seen_s, 0, 0, None)
        sample = eligible[
            np.linspace(0, eligible.size - 1, min(FINGERPRINT_DEVICES, eligible.size)).astype(int)
        ]
        reread_s, g_now_us = self.read_block(reference.addresses[sample])
        age_ref_s = np.maximum(
            reference.read_s[sample] - reference.programmed_s[sample], FINGERPRINT_MIN_AGE_S
        )
        age_now_s = np.maximum(reread_s - reference.programmed_s[sample], age_ref_s)
        ratio = g_now_us / reference.g_us[sample]
        # ratio ∈ [RATIO_FLOOR·(age_now/age_ref)^−NU_MAX, RATIO_CEILING]
        floor = RATIO_FLOOR * (age_now_s / age_ref_s) ** -NU_MAX
        outside = int(np.count_nonzero((ratio < floor) | (ratio > RATIO_CEILING)))
        return Continuity(now_s, last_seen_s, int(sample.size), outside, float(np.median(ratio)))

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
            # The board's watchdog grounds the lines when the host goes silent. A link already
            # known to be down is the expected case (its error was reported when it went down).
            if self.chip.link_down_since:
                log.warning("station %s: safe state left to the board's watchdog: %s", self.name, exc)
            else:
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
    chip: ChipDriver | None = None
    on_close = embedded.stop if embedded is not None else None
    try:
        chip = ChipDriver(open_transport(resource, timeout_s=timeout_s))
        return Station(name, chip, advances_clock=advances_clock, on_close=on_close)
    except BaseException:  # a board that does not answer its first command leaves nothing open
        if chip is not None:
            chip.close()
        if embedded is not None:
            embedded.stop()
        raise
