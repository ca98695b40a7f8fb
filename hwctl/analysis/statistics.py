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
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import erf

from drivers.pcm_model import PCMModel
from hwctl.analysis.drift import DriftFit
from hwctl.store.fits import FitStatus, FittedLines

_CHUNK_DEVICES = 16_384
# Devices per chunk of the statistics passes: their temporaries stay a few MB, not per chip.
_STATISTICS_CHUNK_DEVICES = 1 << 18
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
    t_s: npt.ArrayLike | None,
    model: PCMModel | None = None,
    converged: npt.ArrayLike | None = None,
    bin_width_us: float = 2.5,
    correct_fit_error: bool = True,
    thresholds: OutlierThresholds | None = None,
    *,
    model_read_noise_rel: npt.ArrayLike | None = None,
) -> ChipStatistics:
    """Bin statistics and outliers for one chip's readouts.

    `t_s` is the same time-since-programming array given to `fit_drift`; it serves only
    to predict each device's read noise (`model_relative_read_noise`), so a caller that
    fitted range by range passes that prediction as `model_read_noise_rel` and `t_s=None`
    instead of holding every readout's ages at once. Without a
    `converged` mask from program-and-verify, devices whose G(t0) lies `far_sigmas`
    model σ_prog from target count as not converged. A device is a fast drifter when its
    ν lies `fast_sigmas` above its bin's μ_ν, counting both the bin's spread and the
    device's own fit error (so noisy low-conductance fits are not flagged), or when it
    is confidently (by `fast_sigmas` standard errors) above `nu_fast_abs`. "Dead" means
    no reading above 0 where the target makes 0 implausible (beyond `far_sigmas`).
    """
    model = model or PCMModel()
    limits = thresholds or OutlierThresholds()
    targets = np.asarray(target_g_us)
    if targets.shape != fit.nu.shape:
        raise ValueError(f"{targets.size} targets for {fit.n_devices} fitted devices")
    if (t_s is None) == (model_read_noise_rel is None):
        raise ValueError("give either the readout ages t_s or the predicted model_read_noise_rel")
    rel_noise_model = (
        model_relative_read_noise(fit, np.asarray(t_s), model)
        if t_s is not None
        else np.asarray(model_read_noise_rel)
    )
    converged_all = None if converged is None else np.asarray(converged, bool)
    n_bins = round(model.g_max_us / bin_width_us)
    sums = [_BinSums() for _ in range(n_bins)]
    found: dict[str, list[npt.NDArray[np.intp]]] = {"stuck": [], "dead": [], "non_converged": []}
    n_reset = 0
    # Pass 1, chunk by chunk: each device's class, and the bins' sums over the usable ones.
    for chunk in _chunks(fit.n_devices):
        target = np.asarray(targets[chunk], np.float64)
        ok, nu = (
            fit.status[chunk] == FitStatus.OK,
            np.asarray(fit.nu[chunk], np.float64),
        )  # not fit.ok: whole chip
        programmed = target > 0
        far_us = limits.far_sigmas * model.sigma_prog_us(target)
        far = np.abs(fit.g_t0_us[chunk] - target) > far_us
        conv = ~(far & ok) if converged_all is None else converged_all[chunk]
        stuck = programmed & ok & (np.abs(nu) < limits.nu_constant_max) & (far | ~conv)
        dead = (target > far_us) & (fit.status[chunk] == FitStatus.NO_SIGNAL)
        non_converged = programmed & ~conv
        usable = programmed & ok & conv & ~stuck
        bin_of = _bin_of(target, bin_width_us, n_bins)
        for b, bin_sums in enumerate(sums):
            in_bin = programmed & (bin_of == b)
            bin_sums.n_devices += int(in_bin.sum())
            bin_sums.add(fit, chunk, in_bin & usable, target, rel_noise_model[chunk], model)
        for kind, mask in (("stuck", stuck), ("dead", dead), ("non_converged", non_converged)):
            found[kind].append(chunk.start + np.flatnonzero(mask))
        n_reset += int((~programmed).sum())
    bins = []
    for b, bin_sums in enumerate(sums):
        lo_us, hi_us = b * bin_width_us, (b + 1) * bin_width_us
        bins.append(BinStatistics(lo_us, hi_us, bin_sums.n_devices, bin_sums.n_used,
                                  **bin_sums.statistics(correct_fit_error)))  # fmt: skip
    # Pass 2: fast drifters, against their bin's μ_ν and σ_ν (NaN where a bin has none: never fast).
    nu_mean = np.array([b.nu_mean for b in bins], np.float64)
    nu_sigma = np.array([b.nu_sigma for b in bins], np.float64)
    fast = []
    for chunk in _chunks(fit.n_devices):
        target = np.asarray(targets[chunk], np.float64)
        nu, nu_stderr = np.asarray(fit.nu[chunk], np.float64), np.asarray(fit.nu_stderr[chunk], np.float64)
        bin_of = _bin_of(target, bin_width_us, n_bins)
        spread = np.sqrt(nu_sigma[bin_of] ** 2 + nu_stderr**2)
        with np.errstate(invalid="ignore"):
            above_bin = nu > nu_mean[bin_of] + limits.fast_sigmas * spread
            above_limit = nu - limits.fast_sigmas * nu_stderr > limits.nu_fast_abs
        ok = fit.status[chunk] == FitStatus.OK
        fast.append(chunk.start + np.flatnonzero((target > 0) & ok & (above_bin | above_limit)))
    return ChipStatistics(
        t0_s=fit.t0_s,
        g_max_us=model.g_max_us,
        bin_width_us=bin_width_us,
        fit_error_corrected=correct_fit_error,
        n_devices=fit.n_devices,
        n_reset_targets=n_reset,
        bins=bins,
        outliers=Outliers(
            stuck=_indices(found["stuck"]),
            dead=_indices(found["dead"]),
            fast_drifters=_indices(fast),
            non_converged=_indices(found["non_converged"]),
        ),
    )


def _chunks(n_devices: int) -> Iterator[slice]:
    for start in range(0, n_devices, _STATISTICS_CHUNK_DEVICES):
        yield slice(start, min(start + _STATISTICS_CHUNK_DEVICES, n_devices))


def _bin_of(target: npt.NDArray[np.float64], bin_width_us: float, n_bins: int) -> npt.NDArray[np.int64]:
    return np.minimum((target / bin_width_us).astype(np.int64), n_bins - 1)


class _Moments:
    """Count, mean and sum of squared deviations of a quantity, merged chunk by chunk
    (Chan et al.): M2 = M2_a + M2_b + δ²·n_a·n_b/n with δ = mean_b − mean_a."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, values: npt.NDArray[np.float64]) -> None:
        n_b = values.size
        if n_b == 0:
            return
        mean_b = float(values.mean())
        m2_b = float(np.square(values - mean_b).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.mean += delta * n_b / n
        self.n = n

    @property
    def var(self) -> float:
        """Population variance, as `np.var`."""
        return self.m2 / self.n


class _BinSums:
    """What one target bin's `BinStatistics` needs, summed over its usable devices chunk by chunk."""

    QUANTITIES = ("g_t", "log_x", "error", "nu", "g_t0_fit_var", "nu_fit_var", "model_prog_var",
                  "folded_mean", "folded_var", "read_noise_sq", "model_read_noise_sq")  # fmt: skip

    def __init__(self) -> None:
        self.n_devices = 0  # non-zero targets in the bin
        self.moments = {name: _Moments() for name in self.QUANTITIES}

    @property
    def n_used(self) -> int:
        return self.moments["g_t"].n

    def add(
        self, fit: DriftFit, chunk: slice, used: npt.NDArray[np.bool_], target: npt.NDArray[np.float64],
        rel_noise_model: npt.NDArray[np.floating], model: PCMModel,
    ) -> None:  # fmt: skip
        if not used.any():
            return
        g_t = target[used]

        def of(values: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
            return np.asarray(values[chunk][used], np.float64)

        folded_mean, folded_var = _folded_normal_moments(model.drift_mu(g_t), model.drift_sigma(g_t))
        values = {
            "g_t": g_t,
            "log_x": np.log(g_t / model.g_max_us),
            "error": of(fit.g_t0_us) - g_t,
            "nu": of(fit.nu),
            "g_t0_fit_var": of(fit.g_t0_stderr_us) ** 2,
            "nu_fit_var": of(fit.nu_stderr) ** 2,
            "model_prog_var": model.sigma_prog_us(g_t) ** 2,
            "folded_mean": folded_mean,
            "folded_var": folded_var,
            "read_noise_sq": of(fit.residual_std) ** 2,
            "model_read_noise_sq": np.asarray(rel_noise_model[used], np.float64) ** 2,
        }
        for name, moments in self.moments.items():
            moments.add(values[name])

    def statistics(self, correct_fit_error: bool) -> dict[str, float]:
        if self.n_used == 0:
            measured = (f.name for f in fields(BinStatistics) if f.name not in _BIN_IDENTITY)
            return dict.fromkeys(measured, math.nan)
        m = self.moments
        prog_var, nu_var = m["error"].var, m["nu"].var
        if correct_fit_error:
            prog_var -= m["g_t0_fit_var"].mean
            nu_var -= m["nu_fit_var"].mean
        return {
            "target_mean_us": m["g_t"].mean,
            "mean_log_x": m["log_x"].mean,
            "var_log_x": m["log_x"].var,
            "prog_bias_us": m["error"].mean,
            "prog_sigma_us": _unresolved_if_negative(prog_var),
            "model_prog_sigma_us": math.sqrt(m["model_prog_var"].mean),
            "nu_mean": m["nu"].mean,
            "nu_sigma": _unresolved_if_negative(nu_var),
            "model_nu_mean": m["folded_mean"].mean,
            "model_nu_sigma": math.sqrt(m["folded_var"].mean + m["folded_mean"].var),
            "read_noise_rel": math.sqrt(m["read_noise_sq"].mean),
            "model_read_noise_rel": math.sqrt(m["model_read_noise_sq"].mean),
        }


def _unresolved_if_negative(variance: float) -> float:
    """A spread, or NaN where the fit's own error exceeds the measured scatter (e.g. low-G
    bins read once per point): 0 would claim a perfect chip, NaN says "not resolved"."""
    return math.sqrt(variance) if variance > 0 else math.nan


def model_relative_read_noise(fit: FittedLines, t_s: np.ndarray, model: PCMModel) -> npt.NDArray[np.float64]:
    """RMS over a device's reads of the §4 law σ_read/G = Q_s(G(t0))·sqrt(ln((t+t_read)/2t_read)).

    G(t0) is the device's own fitted intercept, so this isolates the read-noise law from the
    programming and drift statistics.
    """
    n_dev = fit.n_devices
    t = t_s[:, None] if t_s.ndim == 1 else t_s
    out = np.empty(n_dev, np.float64)
    for start in range(0, n_dev, _CHUNK_DEVICES):
        cols = slice(start, min(start + _CHUNK_DEVICES, n_dev))
        t_chunk = t if t.shape[1] == 1 else t[:, cols]
        rel = model.read_noise_q_s(fit.g_t0_us[cols])[None, :] * model.read_time_factor(t_chunk)
        out[cols] = np.sqrt(np.mean(rel * rel, axis=0))
    return out


def _folded_normal_moments(mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of |μ + σξ|: the simulator draws ν = |μ_ν + σ_ν·ξ| (§3)."""
    half_normal = sigma * np.sqrt(2 / np.pi) * np.exp(-(mu**2) / (2 * sigma**2))
    mean = half_normal + mu * erf(mu / (sigma * np.sqrt(2)))
    return mean, mu**2 + sigma**2 - mean**2


def _indices(parts: list[npt.NDArray[np.intp]]) -> list[int]:
    """Device indices found chunk by chunk, as one ascending list of plain ints."""
    return [int(i) for part in parts for i in part]


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
