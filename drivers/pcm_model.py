"""The PCM device model: the laws and constants that describe one PCM device.

Neutral ground shared by the simulator (`drivers.sim.pcm`, which draws devices from
these laws) and the analysis (`hwctl.analysis`, which compares a chip's measured
statistics with them and fits them). Every law is documented in `docs/pcm-model.md`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


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
