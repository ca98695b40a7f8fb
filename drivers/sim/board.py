"""The simulated board: PCM array + clock + limits + safety, with typed methods.

`SimBoard` implements the `drivers.base.Chip` protocol directly (the in-process chip),
and the TCP server maps wire commands onto these same methods, so the semantics
(limits, error codes, safe state) live in exactly one place.
"""

from __future__ import annotations

import numpy as np

from drivers.base import Addresses, Float32s, Geometry, Identity
from drivers.errors import BoardError
from drivers.pcm_model import PCMModel
from drivers.protocol import ERR_BAD_ADDRESS, ERR_COMMAND, ERR_DATA_OUT_OF_RANGE
from drivers.sim.clock import Clock, VirtualClock
from drivers.sim.pcm import PCMArray

DEFAULT_GEOMETRY = Geometry(tiles=16, rows=512, cols=256)
HARDWARE_MAX_AMPLITUDE_UA = 500.0


class SimBoard:
    """A PCM test chip in software, faithful to `pcm-model.md`."""

    def __init__(
        self,
        geometry: Geometry = DEFAULT_GEOMETRY,
        model: PCMModel | None = None,
        clock: Clock | None = None,
        seed: int = 0,
        serial: str = "SIM-0001",
    ) -> None:
        self._geometry = geometry
        self.clock: Clock = clock if clock is not None else VirtualClock()
        self.array = PCMArray(geometry.n_devices, model or PCMModel(), self.clock, seed=seed)
        self._identity = Identity("hwctl", "SIMPCM-90NM", serial, "sim-0.1")
        self._limit_ua = HARDWARE_MAX_AMPLITUDE_UA
        self.pulser_enabled = True

    # -- identity and geometry -------------------------------------------------
    def identify(self) -> Identity:
        return self._identity

    def geometry(self) -> Geometry:
        return self._geometry

    def board_time_s(self) -> float:
        return self.clock.now_s()

    def temperature_c(self) -> float:
        return 25.0

    # -- limits and safety -----------------------------------------------------
    def max_amplitude_ua(self) -> float:
        return HARDWARE_MAX_AMPLITUDE_UA

    def amplitude_limit_ua(self) -> float:
        return self._limit_ua

    def set_amplitude_limit_ua(self, limit_ua: float) -> None:
        if not (0.0 < limit_ua <= HARDWARE_MAX_AMPLITUDE_UA):
            raise BoardError(
                ERR_DATA_OUT_OF_RANGE,
                f"amplitude limit {limit_ua} uA outside (0, {HARDWARE_MAX_AMPLITUDE_UA}] uA",
            )
        self._limit_ua = float(limit_ua)

    def safe_state(self) -> None:
        """Ground all lines and switch the pulser off; the next pulse re-enables it."""
        self.pulser_enabled = False

    # -- pulses and reads --------------------------------------------------------
    def _check_addresses(self, addresses: Addresses) -> None:
        if addresses.size and int(addresses.max()) >= self._geometry.n_devices:
            raise BoardError(
                ERR_BAD_ADDRESS,
                f"address {int(addresses.max())} beyond the array ({self._geometry.n_devices} devices)",
            )

    def reset(self, addresses: Addresses) -> None:
        self._check_addresses(addresses)
        self.pulser_enabled = True
        self.array.reset(addresses)

    def set_pulse(self, addresses: Addresses, amplitudes_ua: Float32s) -> None:
        self._check_addresses(addresses)
        if addresses.shape != amplitudes_ua.shape:
            raise BoardError(ERR_COMMAND, "address and amplitude blocks differ in length")
        if amplitudes_ua.size:
            bad = ~np.isfinite(amplitudes_ua) | (amplitudes_ua < 0) | (amplitudes_ua > self._limit_ua)
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                raise BoardError(
                    ERR_DATA_OUT_OF_RANGE,
                    f"Data out of range: amplitude {float(amplitudes_ua[first])} uA at device "
                    f"{int(addresses[first])} exceeds the limit {self._limit_ua} uA; nothing applied",
                )
        self.pulser_enabled = True
        self.array.set_pulse(addresses, amplitudes_ua)

    def read_block(self, addresses: Addresses) -> Float32s:
        self._check_addresses(addresses)
        return self.array.read(addresses)
