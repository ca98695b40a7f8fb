"""Vectorized PCM device physics: pulses, relaxation, drift and 1/f read noise.

Every equation and constant is in `../shared/design/pcm-model.md` (Joshi et al. 2020,
aihwkit's `PCMLikeNoiseModel`); section numbers below refer to it. One numpy array per
device property, indexed by device address.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from drivers.base import Addresses, Float32s
from drivers.sim.clock import Clock


@dataclass
class PCMModel:
    """Device statistics in the parameter form the simulator uses (and fits export)."""

    g_max_us: float = 25.0
    # §2: programming error at t0, sigma_prog(x) = c0 + c1 x + c2 x^2, x = G/G_max.
    prog_noise_coeffs_us: tuple[float, float, float] = (0.26348, 1.9650, -1.1731)
    # Relaxation between the last verify read and t0 (same polynomial form); with the
    # default program-and-verify tolerance this plus the verify residual lands on §2.
    relax_noise_coeffs_us: tuple[float, float, float] = (0.2, 1.9, -1.15)
    # §3 drift exponent statistics.
    drift_mu_coeffs: tuple[float, float] = (-0.0155, 0.0244)
    drift_mu_clip: tuple[float, float] = (0.049, 0.1)
    drift_sigma_coeffs: tuple[float, float] = (-0.0125, -0.0059)
    drift_sigma_clip: tuple[float, float] = (0.008, 0.045)
    # §4 read noise.
    read_noise_q: float = 0.0088
    read_noise_exponent: float = 0.65
    read_noise_q_max: float = 0.2
    t_read_s: float = 250e-9
    min_read_age_s: float = 1e-6
    # §5 time origin: relaxation completes and drift starts at t0.
    t0_s: float = 25.0
    relax_tau_s: float = 1.0
    # RESET: half-normal, mean ~0.105 uS.
    reset_sigma_us: float = 0.1316
    # Partial SET: amplitude I drives G towards g_eq(I) = g_sat·clip((I−I_th)/(I_sat−I_th), 0, 1).
    set_threshold_ua: float = 50.0
    set_saturation_ua: float = 200.0
    set_g_sat_us: float = 30.0
    set_rate: float = 0.6
    set_rate_sigma: float = 0.25
    set_additive_sigma_us: float = 0.15
    device_gain_sigma: float = 0.1
    # Defects: fraction of devices stuck (SET-stuck at high G, or dead at 0).
    stuck_rate: float = 0.0
    dead_rate: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_json(cls, path: str | Path) -> PCMModel:
        raw = json.loads(Path(path).read_text())
        for key, value in raw.items():
            if isinstance(value, list):
                raw[key] = tuple(value)
        return cls(**raw)

    # -- the laws, vectorized ---------------------------------------------------
    def sigma_prog_us(self, g_us: np.ndarray) -> np.ndarray:
        return _poly(self.prog_noise_coeffs_us, g_us / self.g_max_us)

    def sigma_relax_us(self, g_us: np.ndarray) -> np.ndarray:
        return np.maximum(_poly(self.relax_noise_coeffs_us, g_us / self.g_max_us), 0.0)

    def drift_mu(self, g_us: np.ndarray) -> np.ndarray:
        x = np.maximum(g_us / self.g_max_us, 1e-7)
        a, b = self.drift_mu_coeffs
        return np.clip(a * np.log(x) + b, *self.drift_mu_clip)

    def drift_sigma(self, g_us: np.ndarray) -> np.ndarray:
        x = np.maximum(g_us / self.g_max_us, 1e-7)
        a, b = self.drift_sigma_coeffs
        return np.clip(a * np.log(x) + b, *self.drift_sigma_clip)

    def read_noise_q_s(self, g_us: np.ndarray) -> np.ndarray:
        x = np.maximum(np.abs(g_us) / self.g_max_us, 0.0) ** self.read_noise_exponent
        return np.minimum(self.read_noise_q / np.maximum(x, 1e-3), self.read_noise_q_max)

    def read_time_factor(self, t_s: np.ndarray) -> np.ndarray:
        t = np.maximum(t_s, self.min_read_age_s)
        return np.sqrt(np.maximum(np.log((t + self.t_read_s) / (2 * self.t_read_s)), 0.0))


def _poly(coeffs: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    c0, c1, c2 = coeffs
    return c0 + c1 * x + c2 * x * x


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
        self.t_programmed_s = np.full(n, clock.now_s(), np.float64)
        self.gain = np.exp(self.rng.normal(0.0, model.device_gain_sigma, n)).astype(np.float32)
        defect = self.rng.random(n)
        self.stuck = defect < model.stuck_rate
        self.dead = (defect >= model.stuck_rate) & (defect < model.stuck_rate + model.dead_rate)
        self.g_state_us[self.stuck] = self.rng.uniform(10.0, model.g_max_us, int(self.stuck.sum()))
        self.g_t0_us[:] = self.g_state_us

    # -- pulses -----------------------------------------------------------------
    def _programmed(self, addresses: Addresses) -> None:
        """A programming event: new relaxation offset and drift exponent, clock restarts."""
        m = self.model
        g = self.g_state_us[addresses].astype(np.float64)
        relax = m.sigma_relax_us(g) * self.rng.standard_normal(g.size)
        self.g_t0_us[addresses] = np.maximum(g + relax, 0.0)
        nu = np.abs(m.drift_mu(g) + m.drift_sigma(g) * self.rng.standard_normal(g.size))
        self.drift_nu[addresses] = nu
        self.t_programmed_s[addresses] = self.clock.now_s()

    def _alive(self, addresses: Addresses) -> Addresses:
        return addresses[~(self.stuck[addresses] | self.dead[addresses])]

    def reset(self, addresses: Addresses) -> None:
        addresses = self._alive(addresses)
        self.g_state_us[addresses] = np.abs(self.rng.normal(0.0, self.model.reset_sigma_us, addresses.size))
        self._programmed(addresses)

    def set_pulse(self, addresses: Addresses, amplitudes_ua: Float32s) -> None:
        m = self.model
        keep = ~(self.stuck[addresses] | self.dead[addresses])
        addresses, amplitudes_ua = addresses[keep], amplitudes_ua[keep]
        frac = (amplitudes_ua - m.set_threshold_ua) / (m.set_saturation_ua - m.set_threshold_ua)
        g_eq = m.set_g_sat_us * np.clip(frac, 0.0, 1.0) * self.gain[addresses]
        g = self.g_state_us[addresses]
        n = addresses.size
        rate = m.set_rate * np.maximum(1.0 + m.set_rate_sigma * self.rng.standard_normal(n), 0.0)
        step = np.maximum(g_eq - g, 0.0) * rate + m.set_additive_sigma_us * self.rng.standard_normal(n)
        step[g_eq <= 0] = 0.0
        self.g_state_us[addresses] = np.maximum(g + step, 0.0)
        self._programmed(addresses)

    # -- reads ------------------------------------------------------------------
    def conductance_us(self, addresses: Addresses, now_s: float | None = None) -> np.ndarray:
        """Noise-free conductance at board time `now_s` (relaxation, then drift)."""
        m = self.model
        now = self.clock.now_s() if now_s is None else now_s
        t = now - self.t_programmed_s[addresses]
        g_state = self.g_state_us[addresses].astype(np.float64)
        g_t0 = self.g_t0_us[addresses].astype(np.float64)
        early = t < m.t0_s
        out = np.empty(addresses.size, np.float64)
        if early.any():
            te = np.maximum(t[early], 0.0)
            r = np.log1p(te / m.relax_tau_s) / np.log1p(m.t0_s / m.relax_tau_s)
            out[early] = g_state[early] + (g_t0[early] - g_state[early]) * r
        late = ~early
        if late.any():
            out[late] = g_t0[late] * (t[late] / m.t0_s) ** (-self.drift_nu[addresses][late])
        out[self.dead[addresses]] = 0.0
        return out

    def read(self, addresses: Addresses) -> Float32s:
        m = self.model
        now = self.clock.now_s()
        g = self.conductance_us(addresses, now)
        t = now - self.t_programmed_s[addresses]
        sigma = np.abs(g) * m.read_noise_q_s(g) * m.read_time_factor(t)
        return np.maximum(g + sigma * self.rng.standard_normal(g.size), 0.0).astype(np.float32)
