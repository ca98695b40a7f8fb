"""The simulated board: PCM array + clock + limits + safety, with typed methods.

`SimBoard` implements the `drivers.base.Chip` protocol directly (the in-process chip),
and the TCP server maps wire commands onto these same methods, so the semantics
(limits, error codes, safe state) live in exactly one place.

Power: without a state file the board is volatile like the simulator always was (a new
board, or one power-cycled, has blank devices and its clock at 0). With `state_path`
it is non-volatile like a real PCM chip: devices and board time survive a restart or
`power_cycle()` (see `drivers.sim.state` for what survives a kill -9 and why).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drivers.base import Addresses, Float32s, Geometry, Identity
from drivers.errors import BoardError
from drivers.pcm_model import PCMModel
from drivers.protocol import ERR_BAD_ADDRESS, ERR_COMMAND, ERR_DATA_OUT_OF_RANGE
from drivers.sim.clock import Clock, VirtualClock
from drivers.sim.pcm import PCMArray
from drivers.sim.state import MemoryStore, open_store

DEFAULT_GEOMETRY = Geometry(tiles=16, rows=512, cols=256)
GEOMETRY_PRESETS = {
    # IBM's 14 nm inference chip: 34 tiles of 512×2048, 35.7 M PCM devices (Ambrogio et al., Nature 2023).
    "ibm-14nm": Geometry(tiles=34, rows=512, cols=2048),
    # 50.3 M devices: room for ImageNet ResNet-34 (21.8 M weights = 43.6 M devices).
    "50m": Geometry(tiles=48, rows=512, cols=2048),
}
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
        *,
        state_path: Path | None = None,
    ) -> None:
        self._geometry = geometry
        self._model = model
        self._seed = seed
        self.state_path = state_path
        self.clock: Clock = clock if clock is not None else VirtualClock()
        self._identity = Identity("hwctl", "SIMPCM-90NM", serial, "sim-0.1")
        self._store: MemoryStore | None = None
        self._power_up()
        self.clock.subscribe(self._clock_jumped)

    # -- power -------------------------------------------------------------------------
    def _power_up(self) -> None:
        """Devices as the state file kept them (or blank), limits at their defaults."""
        if self.state_path is None:
            store, model = MemoryStore(self._geometry.n_devices), self._model or PCMModel()
        else:
            store, model = open_store(self.state_path, self._geometry, self._seed, self._model)
            if not store.fresh:
                self.clock.power_on(store.resume_time_s())
        self.array = PCMArray(self._geometry.n_devices, model, self.clock, seed=self._seed, store=store)
        store.save_clock(self.clock.now_s(), self.clock.wall_rate())
        store.sealed()
        self._store = store
        self._limit_ua = HARDWARE_MAX_AMPLITUDE_UA
        self.pulser_enabled = True

    def power_cycle(self) -> None:
        """The board loses power and comes back (a fault for tests).

        Volatile: every device blank again, the clock restarts at 0. With a state file:
        devices as they were, the clock continuing from the saved board time (plus the
        wall time since × rate for a real or accelerated clock)."""
        self.close()
        if self.state_path is None:
            self.clock.power_on(0.0)
        self._power_up()

    def close(self) -> None:
        """Sync the state file (if any); the board is unusable until powered up again."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def _clock_jumped(self) -> None:
        if self._store is not None:
            self._store.save_clock(self.clock.now_s(), self.clock.wall_rate())

    # -- identity and geometry -------------------------------------------------
    def identify(self) -> Identity:
        return self._identity

    def geometry(self) -> Geometry:
        return self._geometry

    def board_time_s(self) -> float:
        now_s = self.clock.now_s()
        if self._store is not None:
            self._store.note_time(now_s)  # never earlier than this after a restart
        return now_s

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
                value = float(amplitudes_ua[first])
                why = (f"exceeds the limit {self._limit_ua} uA" if value > self._limit_ua
                       else f"is outside [0, {self._limit_ua}] uA")  # fmt: skip
                raise BoardError(
                    ERR_DATA_OUT_OF_RANGE,
                    f"Data out of range: amplitude {value} uA at device {int(addresses[first])} {why}; "
                    "nothing applied",
                )
        self.pulser_enabled = True
        self.array.set_pulse(addresses, amplitudes_ua)

    def read_block(self, addresses: Addresses) -> Float32s:
        self._check_addresses(addresses)
        return self.array.read(addresses)
