"""Vectorized PCM device physics: pulses, relaxation, drift and 1/f read noise.

The laws and constants are `drivers.pcm_model.PCMModel` (documented in
`docs/pcm-model.md`); this module keeps each device's *state* (`drivers.sim.state`:
in memory or in a state file) and advances it. The chip never knows a target: a SET
pulse moves G part of the way towards an amplitude-dependent equilibrium, a RESET
returns it near 0, and every pulse is a programming event that restarts the device's
own clock. What happens after the last pulse (relaxation until t0, then drift with an
exponent drawn from the state) is drawn lazily, the first time a read needs it, so
verify reads taken right after a pulse cost no random draws.

Every operation walks its addresses in chunks of `CHUNK_DEVICES`, so no temporary is
larger than a chunk whatever the block or chip size (a read's result is the block).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from drivers.base import Addresses, Float32s
from drivers.pcm_model import PCMModel
from drivers.sim.clock import Clock
from drivers.sim.state import CHUNK_DEVICES, DEAD, FROZEN, STUCK, UNSETTLED, MemoryStore

Bools = npt.NDArray[np.bool_]


class PCMArray:
    """State of every device, advanced by pulses and read through drift and noise."""

    def __init__(
        self,
        n_devices: int,
        model: PCMModel,
        clock: Clock,
        seed: int = 0,
        store: MemoryStore | None = None,
    ) -> None:
        self.model = model
        self.clock = clock
        self.store = store if store is not None else MemoryStore(n_devices)
        self.n_devices = n_devices
        if self.store.fresh:
            self.rng = np.random.default_rng(seed)
            self._fabricate()
        else:  # a restarted chip: same devices, fresh noise for this power-up
            self.rng = np.random.default_rng([seed, self.store.boots])

    # -- the device arrays (views of the store) ------------------------------------------
    @property
    def g_state_us(self) -> Float32s:
        return self.store.arrays["g_state_us"]

    @property
    def g_t0_us(self) -> Float32s:
        return self.store.arrays["g_t0_us"]

    @property
    def drift_nu(self) -> Float32s:
        return self.store.arrays["drift_nu"]

    @property
    def t_programmed_s(self) -> npt.NDArray[np.float64]:
        return self.store.arrays["t_programmed_s"]

    @property
    def gain(self) -> Float32s:
        return self.store.arrays["gain"]

    @property
    def flags(self) -> npt.NDArray[np.uint8]:
        return self.store.arrays["flags"]

    @property
    def stuck(self) -> Bools:
        """Devices stuck at a high conductance (a whole-chip mask, for inspection)."""
        return (self.flags & STUCK) != 0

    @property
    def dead(self) -> Bools:
        """Devices dead at 0 µS (a whole-chip mask, for inspection)."""
        return (self.flags & DEAD) != 0

    # -- fabrication ---------------------------------------------------------------------
    def _fabricate(self) -> None:
        """Draw what the chip is born with: gains, defects (three passes, chunk by chunk)."""
        m, now_s = self.model, self.clock.now_s()
        for part in _ranges(self.n_devices):
            self.gain[part] = m.device_gain(self.rng.normal(0.0, 1.0, part.stop - part.start))
            if now_s:
                self.t_programmed_s[part] = now_s
        for part in _ranges(self.n_devices):
            defect = self.rng.random(part.stop - part.start, np.float32)
            stuck = defect < m.stuck_rate
            dead = (defect >= m.stuck_rate) & (defect < m.stuck_rate + m.dead_rate)
            if stuck.any() or dead.any():
                self.flags[part] = np.where(stuck, STUCK, 0) | np.where(dead, DEAD, 0)
        for part in _ranges(self.n_devices) if m.stuck_rate > 0 else ():
            stuck_at = np.flatnonzero(self.flags[part] & STUCK) + part.start
            g = self.rng.uniform(m.stuck_g_min_us, m.g_max_us, stuck_at.size).astype(np.float32)
            self.g_state_us[stuck_at] = g
            self.g_t0_us[stuck_at] = g

    # -- programming events --------------------------------------------------------------
    def _living(self, addresses: Addresses) -> tuple[Addresses, npt.NDArray[np.uint8], Bools | None]:
        """The devices pulses move (not stuck or dead), their flags, and the mask that picked
        them from `addresses` (None: all of them, nothing copied); flags gathered once."""
        flags = self.flags[addresses]
        alive = (flags & FROZEN) == 0
        if alive.all():
            return addresses, flags, None
        return addresses[alive], flags[alive], alive

    def reset(self, addresses: Addresses) -> None:
        """Melt-quench to the amorphous state: G half-normal near 0, no relaxation."""
        for chunk in _chunks(addresses):
            a, flags, _ = self._living(chunk)
            g = self.model.reset_g_us(self.rng.standard_normal(a.size, np.float32))
            nu = self.model.drift_nu(g, self.rng.standard_normal(a.size, np.float32))
            self.store.apply(
                a,
                {
                    "g_state_us": g,
                    "g_t0_us": g,
                    "drift_nu": nu,
                    "flags": flags & ~UNSETTLED,
                    "t_programmed_s": self.clock.now_s(),
                },
            )

    def set_pulse(self, addresses: Addresses, amplitudes_ua: Float32s) -> None:
        """Partial SET: a stochastic, state-dependent step towards g_eq(I)."""
        m = self.model
        for start in range(0, addresses.size, CHUNK_DEVICES):
            a, flags, alive = self._living(addresses[start : start + CHUNK_DEVICES])
            amplitudes = amplitudes_ua[start : start + CHUNK_DEVICES]
            if alive is not None:
                amplitudes = amplitudes[alive]
            g_eq = m.set_equilibrium_us(amplitudes, self.gain[a])
            xi_rate = self.rng.standard_normal(a.size, np.float32)
            xi_kick = self.rng.standard_normal(a.size, np.float32)
            g = m.set_pulse_g_us(self.g_state_us[a], g_eq, xi_rate, xi_kick)
            self.store.apply(
                a, {"g_state_us": g, "flags": flags | UNSETTLED, "t_programmed_s": self.clock.now_s()}
            )

    def _settle(self, addresses: Addresses) -> None:
        """Draw the relaxation offset and drift exponent of the devices' last SET."""
        g = self.g_state_us[addresses]
        g_t0 = self.model.g_t0_us(g, self.rng.standard_normal(g.size, np.float32))
        nu = self.model.drift_nu(g, self.rng.standard_normal(g.size, np.float32))
        flags = self.flags[addresses] & ~UNSETTLED
        self.store.apply(addresses, {"g_t0_us": g_t0, "drift_nu": nu, "flags": flags})

    # -- reads ---------------------------------------------------------------------------
    def conductance_us(self, addresses: Addresses, now_s: float | None = None) -> Float32s:
        """Noise-free conductance at board time `now_s`: relaxation until t0, then drift."""
        now = self.clock.now_s() if now_s is None else now_s
        out = np.empty(addresses.size, np.float32)
        for start in range(0, addresses.size, CHUNK_DEVICES):
            a = addresses[start : start + CHUNK_DEVICES]
            out[start : start + a.size] = self._conductance_at_age(a, now - self.t_programmed_s[a])[0]
        return out

    def _conductance_at_age(
        self, addresses: Addresses, t_s: npt.NDArray[np.float64]
    ) -> tuple[Float32s, Float32s]:
        """G(t) and the programmed state G(t0) the read noise scales with (§4); a device
        read right after its pulse has not relaxed yet: its state is both."""
        m = self.model
        g = self.g_state_us[addresses]
        aged = t_s > 0
        every = aged.all()  # a readback: no masks, no copies
        if not every and not aged.any():
            return g, g  # verify read right after the pulse: the state itself
        a, t = (addresses, t_s) if every else (addresses[aged], t_s[aged])
        unsettled = (self.flags[a] & UNSETTLED) != 0
        if unsettled.any():
            self._settle(a[unsettled])
        g_state, g_t0 = (g if every else g[aged]), self.g_t0_us[a]
        relaxed = g_state + (g_t0 - g_state) * m.relaxed_fraction(t)
        drifted = relaxed * m.drift_factor(t, self.drift_nu[a])
        if every:
            return drifted.astype(np.float32, copy=False), g_t0
        g_programmed = g.copy()
        g_programmed[aged] = g_t0
        g[aged] = drifted
        return g, g_programmed

    def read(self, addresses: Addresses) -> Float32s:
        """One noisy read of each device: the conductance now plus 1/f read noise."""
        out = np.empty(addresses.size, np.float32)
        now = self.clock.now_s()
        for start in range(0, addresses.size, CHUNK_DEVICES):
            a = addresses[start : start + CHUNK_DEVICES]
            t = now - self.t_programmed_s[a]
            g, g_programmed = self._conductance_at_age(a, t)
            sigma = self.model.read_sigma_us(g, g_programmed, t)
            noisy = g + sigma * self.rng.standard_normal(g.size, np.float32)
            np.maximum(noisy, 0.0, out=out[start : start + a.size], dtype=np.float32)
        return out


def _chunks(addresses: Addresses) -> Iterator[Addresses]:
    for start in range(0, addresses.size, CHUNK_DEVICES):
        yield addresses[start : start + CHUNK_DEVICES]


def _ranges(n_devices: int) -> Iterator[slice]:
    for start in range(0, n_devices, CHUNK_DEVICES):
        yield slice(start, min(start + CHUNK_DEVICES, n_devices))
