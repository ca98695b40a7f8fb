"""The PCM device model: the laws and constants that describe one PCM device.

Neutral ground shared by the simulator (`drivers.sim.pcm`, which draws devices from
these laws) and the analysis (`hwctl.analysis`, which compares a chip's measured
statistics with them and fits them). Every law is written above the method that
implements it and documented, with its source, in `docs/pcm-model.md` (section
numbers §n below refer to it). Units: conductance in µS, current in µA, time in s;
ξ is a standard normal draw, which the caller passes in so the laws stay pure.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating]


@dataclass
class PCMModel:
    """Device statistics in the parameter form the simulator uses (and fits export).

    Calibration of `relax_noise_coeffs_us` (§2, §10.3): the spread at t0 is the verify
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
    # §10.3: relaxation between the last pulse and t0 (same polynomial form), see above.
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
    # §5 time origin: relaxation completes and drift starts at t0; §10.3 its time scale.
    t0_s: float = 25.0
    relax_tau_s: float = 1.0
    # §10.1 RESET: half-normal, mean sigma·sqrt(2/pi) = 0.105 uS.
    reset_sigma_us: float = 0.1316
    # §10.2 partial SET: a pulse of amplitude I moves G a random fraction `set_rate` of the
    # way towards g_eq(I) = gain · set_g_per_ua · max(I − I_th, 0), plus an additive kick.
    set_threshold_ua: float = 58.0
    set_g_per_ua_us: float = 0.33
    set_rate: float = 0.6
    set_rate_sigma: float = 0.25
    set_additive_sigma_us: float = 0.15
    # §10.4 per-device gain: ln(gain) ~ N(0, device_gain_sigma²).
    device_gain_sigma: float = 0.1
    # §10.5 defects: fraction of devices stuck (SET-stuck at high G, or dead at 0).
    stuck_rate: float = 0.0
    dead_rate: float = 0.0
    stuck_g_min_us: float = 10.0
    extra: dict[str, float] = field(default_factory=dict)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(self.to_text())

    def to_text(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, path: str | Path) -> PCMModel:
        return cls.from_text(Path(path).read_text())

    @classmethod
    def from_text(cls, text: str) -> PCMModel:
        raw = json.loads(text)
        for key, value in raw.items():
            if isinstance(value, list):
                raw[key] = tuple(value)
        return cls(**raw)

    # -- §2 programming error at t0 (the outcome of program-and-verify) --------------
    # σ_prog(G_T) = c0 + c1·x + c2·x²,  x = G_T / G_max                         [µS]
    def sigma_prog_us(self, g_us: Array) -> Array:
        return _poly(self.prog_noise_coeffs_us, g_us / self.g_max_us)

    # -- §10.3 relaxation between the last pulse and t0 (simulator) ------------------
    # σ_relax(G) = max(0, r0 + r1·x + r2·x²),  x = G_state / G_max              [µS]
    def sigma_relax_us(self, g_us: Array) -> Array:
        return np.maximum(_poly(self.relax_noise_coeffs_us, g_us / self.g_max_us), 0.0)

    # G(t0) = max(0, G_state + σ_relax(G_state)·ξ)                              [µS]
    def g_t0_us(self, g_state_us: Array, xi: Array) -> Array:
        return np.maximum(g_state_us + self.sigma_relax_us(g_state_us) * xi, 0.0)

    # f(t) = min(ln(1 + t/τ) / ln(1 + t0/τ), 1);  G(t) = G_state + (G(t0) − G_state)·f(t), t ≤ t0
    def relaxed_fraction(self, t_since_program_s: Array) -> Array:
        tau_s = self.relax_tau_s
        return np.minimum(np.log1p(t_since_program_s / tau_s) / np.log1p(self.t0_s / tau_s), 1.0)

    # -- §3 drift ---------------------------------------------------------------------
    # μ_ν = clip(a·ln x + b, lo, hi),  x = max(G/G_max, 1e-7)
    def drift_mu(self, g_us: Array) -> Array:
        x = np.maximum(g_us / self.g_max_us, 1e-7)
        a, b = self.drift_mu_coeffs
        return np.clip(a * np.log(x) + b, *self.drift_mu_clip)

    # σ_ν = clip(a·ln x + b, lo, hi),  x = max(G/G_max, 1e-7)
    def drift_sigma(self, g_us: Array) -> Array:
        x = np.maximum(g_us / self.g_max_us, 1e-7)
        a, b = self.drift_sigma_coeffs
        return np.clip(a * np.log(x) + b, *self.drift_sigma_clip)

    # ν = |μ_ν(G) + σ_ν(G)·ξ|, drawn once per programming event
    def drift_nu(self, g_us: Array, xi: Array) -> Array:
        return np.abs(self.drift_mu(g_us) + self.drift_sigma(g_us) * xi)

    # G(t) = G(t0) · (max(t, t0) / t0)^(−ν)    (flat before t0: relaxation rules there)
    def drift_factor(self, t_since_program_s: Array, nu: Array) -> Array:
        return (np.maximum(t_since_program_s, self.t0_s) / self.t0_s) ** (-nu.astype(np.float64))

    # -- §4 read noise ----------------------------------------------------------------
    # Q_s(G_p) = min(q / max((|G_p|/G_max)^e, 1e-3), Q_max)
    # G_p is the device's PROGRAMMED state G(t0) (drawn once per programming event), not
    # the drifted G(t): evaluated at G(t), Q_s would grow as drift lowers G (§4).
    def read_noise_q_s(self, g_programmed_us: Array) -> Array:
        x = (np.abs(g_programmed_us) / self.g_max_us) ** self.read_noise_exponent
        return np.minimum(self.read_noise_q / np.maximum(x, 1e-3), self.read_noise_q_max)

    # sqrt(ln((t + t_read) / (2·t_read))),  t ≥ min_read_age (a read right after a pulse)
    def read_time_factor(self, t_s: Array) -> Array:
        t = np.maximum(t_s, self.min_read_age_s)
        return np.sqrt(np.maximum(np.log((t + self.t_read_s) / (2 * self.t_read_s)), 0.0))

    # σ_read(t) = |G(t)| · Q_s(G(t0)) · sqrt(ln((t + t_read) / (2·t_read)))       [µS]
    def read_sigma_us(
        self, g_us: npt.NDArray[np.float32], g_programmed_us: npt.NDArray[np.float32], t_s: Array
    ) -> npt.NDArray[np.float32]:
        q = self.read_noise_q_s(g_programmed_us).astype(np.float32)
        return np.abs(g_us) * q * self.read_time_factor(t_s).astype(np.float32)

    # -- §10.1 RESET (simulator) --------------------------------------------------------
    # G = σ_reset · |ξ|   (half-normal, mean σ_reset·sqrt(2/π))                 [µS]
    def reset_g_us(self, xi: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.abs(xi) * np.float32(self.reset_sigma_us)

    # -- §10.2 partial SET (simulator) --------------------------------------------------
    # g_eq(I) = gain · k · max(I − I_th, 0): what repeated pulses of amplitude I converge to
    def set_equilibrium_us(self, amplitudes_ua: Array, gain: Array) -> Array:
        """The conductance that repeated SET pulses of this amplitude converge to."""
        return gain * (self.set_g_per_ua_us * np.maximum(amplitudes_ua - self.set_threshold_ua, 0.0))

    # r = ρ · max(1 + σ_ρ·ξ₁, 0);  ΔG = max(g_eq − G, 0)·r + σ_add·ξ₂ if g_eq > 0 else 0
    # G' = max(G + ΔG, 0)
    def set_pulse_g_us(
        self,
        g_us: npt.NDArray[np.float32],
        g_eq_us: npt.NDArray[np.float32],
        xi_rate: npt.NDArray[np.float32],
        xi_kick: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.float32]:
        rate = np.float32(self.set_rate) * np.maximum(1.0 + np.float32(self.set_rate_sigma) * xi_rate, 0.0)
        kick = np.float32(self.set_additive_sigma_us) * xi_kick
        step = np.where(g_eq_us > 0, np.maximum(g_eq_us - g_us, 0.0) * rate + kick, 0.0)
        return np.maximum(g_us + step, 0.0)

    # -- §10.4 device-to-device gain (simulator) ------------------------------------------
    # gain = exp(σ_gain · ξ): log-normal, median 1, fixed at fabrication
    def device_gain(self, xi: Array) -> npt.NDArray[np.float32]:
        return np.exp(self.device_gain_sigma * xi).astype(np.float32)


def _poly(coeffs: tuple[float, ...], x: Array) -> Array:
    c0, c1, c2 = coeffs
    return c0 + c1 * x + c2 * x * x
