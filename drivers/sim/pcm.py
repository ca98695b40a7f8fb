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

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from drivers.base import Addresses, Float32s
from drivers.sim.clock import Clock


@dataclass
class PCMModel:
    """Device statistics in the parameter form the simulator uses (and fits export).

    Calibration of `relax_noise_coeffs_us` (§2): the spread at t0 is the verify
    residual of the project's program-and-verify with default `ProgramSettings`
    (acceptance band ±(0.2 + 0.025·G_T) µS on the verify read) combined in
    quadrature with the relaxation drawn here: σ_prog(G)² = σ_resid(G)² + σ_relax(G)².
    σ_resid = std(G_state − G_T) was measured per 0.5 µS target bin on 300k devices
    with targets uniform over 0–25 µS (0.13 µS near 0 rising to 0.6 µS at 25 µS, the
    non-converged 0.2 % included); σ_relax is the quadratic least-squares fit of
    sqrt(σ_prog² − σ_resid²). `tests/test_faithfulness.py` pins the outcome per
    2.5 µS bin; re-fit when the default settings or the SET physics change, with
    `python -m benchmarks.calibrate_relaxation --devices 1000000` (prints the coefficients).
    """

    g_max_us: float = 25.0
    # §2: programming error at t0, sigma_prog(x) = c0 + c1 x + c2 x^2, x = G/G_max.
    prog_noise_coeffs_us: tuple[float, float, float] = (0.26348, 1.9650, -1.1731)
    # Relaxation between the last pulse and t0 (same polynomial form), see above.
    relax_noise_coeffs_us: tuple[float, float, float] = (0.2488, 1.8292, -1.2246)
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
    # RESET: half-normal, mean sigma·sqrt(2/pi) = 0.105 uS.
    reset_sigma_us: float = 0.1316
    # Partial SET: a pulse of amplitude I moves G a random fraction `set_rate` of the
    # way towards g_eq(I) = gain · set_g_per_ua · max(I − I_th, 0), plus an additive kick.
    set_threshold_ua: float = 58.0
    set_g_per_ua_us: float = 0.33
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
        x = (np.abs(g_us) / self.g_max_us) ** self.read_noise_exponent
        return np.minimum(self.read_noise_q / np.maximum(x, 1e-3), self.read_noise_q_max)

    def read_time_factor(self, t_s: np.ndarray) -> np.ndarray:
        t = np.maximum(t_s, self.min_read_age_s)
        return np.sqrt(np.maximum(np.log((t + self.t_read_s) / (2 * self.t_read_s)), 0.0))

    def set_equilibrium_us(self, amplitudes_ua: np.ndarray, gain: np.ndarray) -> np.ndarray:
        """The conductance that repeated SET pulses of this amplitude converge to."""
        return gain * (self.set_g_per_ua_us * np.maximum(amplitudes_ua - self.set_threshold_ua, 0.0))


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
