"""Vectorized PCM device physics: pulses, relaxation, drift and 1/f read noise.

Every equation and constant is in `../shared/design/pcm-model.md` (Joshi et al. 2020,
aihwkit's `PCMLikeNoiseModel`); section numbers below refer to it. One numpy array per
device property, indexed by device address.

The chip only knows each device's *state*, never a target: a SET pulse moves G part
of the way towards an amplitude-dependent equilibrium, a RESET returns it near 0, and
every pulse is a programming event that restarts the device's own clock. What happens
after the last pulse (relaxation until t0, then drift with an exponent drawn from the
state) is drawn lazily, the first time a read needs it, so verify reads taken right
after a pulse cost no random draws.
"""

from __future__ import annotations

import numpy as np

from drivers.base import Addresses, Float32s
from drivers.pcm_model import PCMModel
from drivers.sim.clock import Clock


class PCMArray:
    """State of every device, advanced by pulses and read through drift and noise."""

    def __init__(self, n_devices: int, model: PCMModel, clock: Clock, seed: int = 0) -> None:
        self.model = model
        self.clock = clock
        self.rng = np.random.default_rng(seed)
        n = n_devices
        self.g_state_us = np.zeros(n, np.float32)  # right after the last pulse
        self.g_t0_us = np.zeros(n, np.float32)  # after relaxation, at t0
        self.drift_nu = np.zeros(n, np.float32)
        self.settled = np.ones(n, bool)  # g_t0_us and drift_nu drawn for the last pulse
        self.t_programmed_s = np.full(n, clock.now_s(), np.float64)
        self.gain = np.exp(self.rng.normal(0.0, model.device_gain_sigma, n)).astype(np.float32)
        defect = self.rng.random(n, np.float32)
        self.stuck = defect < model.stuck_rate
        self.dead = (defect >= model.stuck_rate) & (defect < model.stuck_rate + model.dead_rate)
        self.frozen = self.stuck | self.dead  # pulses do not move these devices
        self.g_state_us[self.stuck] = self.rng.uniform(10.0, model.g_max_us, int(self.stuck.sum()))
        self.g_t0_us[:] = self.g_state_us

    # -- programming events -----------------------------------------------------
    def _draw_drift(self, addresses: Addresses, g_us: np.ndarray) -> None:
        m = self.model
        xi = self.rng.standard_normal(g_us.size, np.float32)
        self.drift_nu[addresses] = np.abs(m.drift_mu(g_us) + m.drift_sigma(g_us) * xi)

    def _settle(self, addresses: Addresses) -> None:
        """Draw the relaxation offset and drift exponent of the devices' last SET."""
        g = self.g_state_us[addresses]
        relax = self.model.sigma_relax_us(g) * self.rng.standard_normal(g.size, np.float32)
        self.g_t0_us[addresses] = np.maximum(g + relax, 0.0)
        self._draw_drift(addresses, g)
        self.settled[addresses] = True

    def _alive(self, addresses: Addresses) -> Addresses:
        return addresses[~self.frozen[addresses]]

    def reset(self, addresses: Addresses) -> None:
        """Melt-quench to the amorphous state: G half-normal near 0, no relaxation."""
        addresses = self._alive(addresses)
        g = np.abs(self.rng.standard_normal(addresses.size, np.float32)) * np.float32(
            self.model.reset_sigma_us
        )
        self.g_state_us[addresses] = g
        self.g_t0_us[addresses] = g
        self._draw_drift(addresses, g)
        self.settled[addresses] = True
        self.t_programmed_s[addresses] = self.clock.now_s()

    def set_pulse(self, addresses: Addresses, amplitudes_ua: Float32s) -> None:
        """Partial SET: a stochastic, state-dependent step towards g_eq(I)."""
        m = self.model
        keep = ~self.frozen[addresses]
        if not keep.all():
            addresses, amplitudes_ua = addresses[keep], amplitudes_ua[keep]
        n = addresses.size
        g_eq = m.set_equilibrium_us(amplitudes_ua, self.gain[addresses])
        g = self.g_state_us[addresses]
        rate = np.float32(m.set_rate) * np.maximum(
            1.0 + np.float32(m.set_rate_sigma) * self.rng.standard_normal(n, np.float32), 0.0
        )
        kick = np.float32(m.set_additive_sigma_us) * self.rng.standard_normal(n, np.float32)
        step = np.where(g_eq > 0, np.maximum(g_eq - g, 0.0) * rate + kick, 0.0)
        self.g_state_us[addresses] = np.maximum(g + step, 0.0)
        self.settled[addresses] = False
        self.t_programmed_s[addresses] = self.clock.now_s()

    # -- reads ------------------------------------------------------------------
    def conductance_us(self, addresses: Addresses, now_s: float | None = None) -> np.ndarray:
        """Noise-free conductance at board time `now_s`: relaxation until t0, then drift."""
        now = self.clock.now_s() if now_s is None else now_s
        t = now - self.t_programmed_s[addresses]
        return self._conductance_at_age(addresses, t)

    def _conductance_at_age(self, addresses: Addresses, t_s: np.ndarray) -> np.ndarray:
        m = self.model
        g = self.g_state_us[addresses]
        aged = t_s > 0
        if not aged.any():
            return g  # verify read right after the pulse: the state itself
        a, t = addresses[aged], t_s[aged]
        unsettled = ~self.settled[a]
        if unsettled.any():
            self._settle(a[unsettled])
        g_state, g_t0 = g[aged], self.g_t0_us[a]
        ratio = np.minimum(np.log1p(t / m.relax_tau_s) / np.log1p(m.t0_s / m.relax_tau_s), 1.0)
        relaxed = g_state + (g_t0 - g_state) * ratio
        drift = (np.maximum(t, m.t0_s) / m.t0_s) ** (-self.drift_nu[a].astype(np.float64))
        g[aged] = relaxed * drift
        return g

    def read(self, addresses: Addresses) -> Float32s:
        m = self.model
        t = self.clock.now_s() - self.t_programmed_s[addresses]
        g = self._conductance_at_age(addresses, t)
        sigma = g * m.read_noise_q_s(g).astype(np.float32) * m.read_time_factor(t).astype(np.float32)
        noisy = g + sigma * self.rng.standard_normal(g.size, np.float32)
        return np.maximum(noisy, 0.0, dtype=np.float32)
