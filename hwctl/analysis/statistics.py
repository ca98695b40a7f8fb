"""Per-target-bin device statistics beside the model, and outlier lists.

Given per-device drift fits (`hwctl.analysis.drift`) and the programmed targets, this
answers pcm-model.md §9's questions bin by bin (2.5 µS bins over 0–25 µS): how wide is
the programming error at t0, how fast and how spread is drift, how noisy are single
reads, and which devices misbehave. Each measured value sits next to the value the
simulator's `PCMModel` predicts *for the same devices*, so a ratio near 1 means the
chip (or the simulator) matches the model.

Fit-error correction: a ν or G(t0) fitted from a handful of single noisy reads carries
its own estimation error, which widens the observed spread (by ~30 % for ν). With
`correct_fit_error` the mean per-device estimation variance is subtracted in quadrature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import erf

from drivers.pcm_model import PCMModel
from hwctl.analysis.drift import DriftFit
from hwctl.store.fits import FitStatus

_CHUNK_DEVICES = 16_384
_BIN_IDENTITY = {"target_lo_us", "target_hi_us", "n_devices", "n_used"}


@dataclass(frozen=True)
class OutlierThresholds:
    far_sigmas: float = 5.0  # |G(t0) − G_T| beyond this many model σ_prog = not on target
    nu_constant_max: float = 0.01  # |ν| below this = the device does not drift (stuck)
    fast_sigmas: float = 4.0  # ν above bin μ_ν + this many σ_ν = fast drifter
    nu_fast_abs: float = 0.2  # ν above this is always a fast drifter


@dataclass(frozen=True)
class BinStatistics:
    """One target-conductance bin; `model_*` is the PCMModel value for the same devices."""

    target_lo_us: float
    target_hi_us: float
    n_devices: int  # non-zero targets in the bin
    n_used: int  # with a good fit, converged, not stuck
    target_mean_us: float
    mean_log_x: float  # mean and variance of ln(G_T/G_max): what fitting the laws needs
    var_log_x: float
    prog_bias_us: float
    prog_sigma_us: float
    model_prog_sigma_us: float
    nu_mean: float
    nu_sigma: float
    model_nu_mean: float
    model_nu_sigma: float
    read_noise_rel: float  # spread of ln G around the fit ≈ σ_read/G
    model_read_noise_rel: float


@dataclass(frozen=True)
class Outliers:
    """Device indices (positions in the fitted arrays) per kind of misbehaviour."""

    stuck: list[int]
    dead: list[int]  # non-zero target, never read above 0
    fast_drifters: list[int]
    non_converged: list[int]


@dataclass(frozen=True)
class ChipStatistics:
    t0_s: float
    g_max_us: float
    bin_width_us: float
    fit_error_corrected: bool
    n_devices: int
    n_reset_targets: int
    bins: list[BinStatistics]
    outliers: Outliers

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready data (NaN becomes None)."""
        safe = _json_safe(asdict(self))
        assert isinstance(safe, dict)
        return safe

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChipStatistics:
        """The statistics `to_dict` gave (as stored with a drift fit); None becomes NaN again."""
        bins = [BinStatistics(**_nan_for_none(b)) for b in data["bins"]]
        scalars: dict[str, Any] = {k: v for k, v in data.items() if k not in ("bins", "outliers")}
        return cls(**scalars, bins=bins, outliers=Outliers(**data["outliers"]))


def chip_statistics(
    fit: DriftFit,
    target_g_us: npt.ArrayLike,
    t_s: npt.ArrayLike,
    model: PCMModel | None = None,
    converged: npt.ArrayLike | None = None,
    bin_width_us: float = 2.5,
    correct_fit_error: bool = True,
    thresholds: OutlierThresholds | None = None,
) -> ChipStatistics:
    """Bin statistics and outliers for one chip's readouts.

    `t_s` is the same time-since-programming array given to `fit_drift`. Without a
    `converged` mask from program-and-verify, devices whose G(t0) lies `far_sigmas`
    model σ_prog from target count as not converged. A device is a fast drifter when its
    ν lies `fast_sigmas` above its bin's μ_ν, counting both the bin's spread and the
    device's own fit error (so noisy low-conductance fits are not flagged), or when it
    is confidently (by `fast_sigmas` standard errors) above `nu_fast_abs`. "Dead" means
    no reading above 0 where the target makes 0 implausible (beyond `far_sigmas`).
    """
    model = model or PCMModel()
    limits = thresholds or OutlierThresholds()
    target = np.asarray(target_g_us, np.float64)
    if target.shape != fit.nu.shape:
        raise ValueError(f"{target.size} targets for {fit.n_devices} fitted devices")
    programmed = target > 0
    far_us = limits.far_sigmas * model.sigma_prog_us(target)
    far = np.abs(fit.g_t0_us - target) > far_us
    conv = ~(far & fit.ok) if converged is None else np.asarray(converged, bool)
    constant = np.abs(fit.nu) < limits.nu_constant_max
    stuck = programmed & fit.ok & constant & (far | ~conv)
    dead = (target > far_us) & (fit.status == FitStatus.NO_SIGNAL)
    non_converged = programmed & ~conv
    usable = programmed & fit.ok & conv & ~stuck

    n_bins = round(model.g_max_us / bin_width_us)
    bin_of = np.minimum((target / bin_width_us).astype(np.int64), n_bins - 1)
    rel_noise_model = _model_relative_read_noise(fit, np.asarray(t_s), model)
    bins = []
    fast = np.zeros(fit.n_devices, bool)
    for b in range(n_bins):
        in_bin = programmed & (bin_of == b)
        used = in_bin & usable
        stats = _bin_statistics(fit, target, used, rel_noise_model, model, correct_fit_error)
        lo_us, hi_us = b * bin_width_us, (b + 1) * bin_width_us
        bins.append(BinStatistics(lo_us, hi_us, int(in_bin.sum()), int(used.sum()), **stats))
        spread = np.sqrt(stats["nu_sigma"] ** 2 + fit.nu_stderr**2)
        fast |= in_bin & fit.ok & (fit.nu > stats["nu_mean"] + limits.fast_sigmas * spread)
    fast |= programmed & fit.ok & (fit.nu - limits.fast_sigmas * fit.nu_stderr > limits.nu_fast_abs)
    return ChipStatistics(
        t0_s=fit.t0_s,
        g_max_us=model.g_max_us,
        bin_width_us=bin_width_us,
        fit_error_corrected=correct_fit_error,
        n_devices=fit.n_devices,
        n_reset_targets=int((~programmed).sum()),
        bins=bins,
        outliers=Outliers(_indices(stuck), _indices(dead), _indices(fast), _indices(non_converged)),
    )


def _bin_statistics(
    fit: DriftFit,
    target: np.ndarray,
    used: np.ndarray,
    rel_noise_model: np.ndarray,
    model: PCMModel,
    correct_fit_error: bool,
) -> dict[str, float]:
    if not used.any():
        return dict.fromkeys((f.name for f in fields(BinStatistics) if f.name not in _BIN_IDENTITY), math.nan)
    g_t = target[used]
    log_x = np.log(g_t / model.g_max_us)
    error = fit.g_t0_us[used] - g_t
    nu = fit.nu[used]
    prog_var, nu_var = float(np.var(error)), float(np.var(nu))
    if correct_fit_error:
        prog_var -= float(np.mean(fit.g_t0_stderr_us[used] ** 2))
        nu_var -= float(np.mean(fit.nu_stderr[used] ** 2))
    folded_mean, folded_var = _folded_normal_moments(model.drift_mu(g_t), model.drift_sigma(g_t))
    return {
        "target_mean_us": float(g_t.mean()),
        "mean_log_x": float(log_x.mean()),
        "var_log_x": float(log_x.var()),
        "prog_bias_us": float(error.mean()),
        "prog_sigma_us": _unresolved_if_negative(prog_var),
        "model_prog_sigma_us": _rms(model.sigma_prog_us(g_t)),
        "nu_mean": float(nu.mean()),
        "nu_sigma": _unresolved_if_negative(nu_var),
        "model_nu_mean": float(folded_mean.mean()),
        "model_nu_sigma": math.sqrt(float(folded_var.mean() + folded_mean.var())),
        "read_noise_rel": _rms(fit.residual_std[used]),
        "model_read_noise_rel": _rms(rel_noise_model[used]),
    }


def _unresolved_if_negative(variance: float) -> float:
    """A spread, or NaN where the fit's own error exceeds the measured scatter (e.g. low-G
    bins read once per point): 0 would claim a perfect chip, NaN says "not resolved"."""
    return math.sqrt(variance) if variance > 0 else math.nan


def _model_relative_read_noise(fit: DriftFit, t_s: np.ndarray, model: PCMModel) -> np.ndarray:
    """RMS over a device's reads of the §4 law σ_read/G = Q_s(G(t))·sqrt(ln((t+t_read)/2t_read)).

    G(t) is the device's own fitted line, so this isolates the read-noise law from the
    programming and drift statistics.
    """
    n_dev = fit.n_devices
    t = t_s[:, None] if t_s.ndim == 1 else t_s
    out = np.empty(n_dev, np.float64)
    for start in range(0, n_dev, _CHUNK_DEVICES):
        cols = slice(start, min(start + _CHUNK_DEVICES, n_dev))
        t_chunk = t if t.shape[1] == 1 else t[:, cols]
        g_t = fit.g_t0_us[cols] * (np.maximum(t_chunk, model.min_read_age_s) / fit.t0_s) ** -fit.nu[cols]
        rel = model.read_noise_q_s(g_t) * model.read_time_factor(t_chunk)
        out[cols] = np.sqrt(np.mean(rel * rel, axis=0))
    return out


def _folded_normal_moments(mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of |μ + σξ|: the simulator draws ν = |μ_ν + σ_ν·ξ| (§3)."""
    half_normal = sigma * np.sqrt(2 / np.pi) * np.exp(-(mu**2) / (2 * sigma**2))
    mean = half_normal + mu * erf(mu / (sigma * np.sqrt(2)))
    return mean, mu**2 + sigma**2 - mean**2


def _rms(values: np.ndarray) -> float:
    return math.sqrt(float(np.mean(np.square(values))))


def _indices(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)]


def _nan_for_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: math.nan if v is None else v for k, v in values.items()}


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
