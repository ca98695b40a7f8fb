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

_CHUNK_DEVICES = 4_096  # devices per chunk of the read-noise prediction (kept in cache)
# Devices per chunk of the statistics passes: their temporaries stay a few MB, not per chip.
_STATISTICS_CHUNK_DEVICES = 1 << 15
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

    `t_s` is the same time-since-programming array given to `fit_drift`; it serves only
    to predict each device's read noise (`model_relative_read_noise`). Without a
    `converged` mask from program-and-verify, devices whose G(t0) lies `far_sigmas`
    model σ_prog from target count as not converged. A device is a fast drifter when its
    ν lies `fast_sigmas` above its bin's μ_ν, counting both the bin's spread and the
    device's own fit error (so noisy low-conductance fits are not flagged), or when it
    is confidently (by `fast_sigmas` standard errors) above `nu_fast_abs`. "Dead" means
    no reading above 0 where the target makes 0 implausible (beyond `far_sigmas`).
    A chip fitted range by range gives each range to a `StatisticsAccumulator` instead.
    """
    model = model or PCMModel()
    targets = np.asarray(target_g_us)
    if targets.shape != fit.nu.shape:
        raise ValueError(f"{targets.size} targets for {fit.n_devices} fitted devices")
    accumulator = StatisticsAccumulator(model, bin_width_us, correct_fit_error, thresholds)
    accumulator.add(fit, targets, model_relative_read_noise(fit, np.asarray(t_s), model), converged)
    return accumulator.finish(fit.nu, fit.nu_stderr, fit.status, targets)


class StatisticsAccumulator:
    """`chip_statistics` fed device range by device range, in device order, so no whole-chip
    fit is held: `add` gathers each range's bin moments and outliers (pass 1), `finish`
    flags fast drifters against the bins' μ_ν and σ_ν (pass 2) from the two per-device
    vectors that needs, ν and its standard error. Memory: one chunk's temporaries."""

    def __init__(
        self,
        model: PCMModel,
        bin_width_us: float = 2.5,
        correct_fit_error: bool = True,
        thresholds: OutlierThresholds | None = None,
    ) -> None:
        self.model = model
        self.limits = thresholds or OutlierThresholds()
        self.bin_width_us = bin_width_us
        self.correct_fit_error = correct_fit_error
        self.n_bins = round(model.g_max_us / bin_width_us)
        self.n_programmed = np.zeros(self.n_bins, np.int64)  # non-zero targets per bin
        self.moments = _BinMoments(len(_QUANTITIES), self.n_bins)
        self.found: dict[str, list[npt.NDArray[np.intp]]] = {"stuck": [], "dead": [], "non_converged": []}
        self.n_reset = 0
        self.n_devices = 0
        self.t0_s = math.nan

    def add(
        self,
        fit: DriftFit,
        target_g_us: npt.ArrayLike,
        model_read_noise_rel: npt.ArrayLike,
        converged: npt.ArrayLike | None = None,
    ) -> None:
        """The next `fit.n_devices` devices: their fit, targets, predicted relative read noise
        (`model_relative_read_noise`) and program-and-verify outcome (None: judged from G(t0))."""
        model, limits = self.model, self.limits
        targets, rel_noise_model = np.asarray(target_g_us), np.asarray(model_read_noise_rel)
        converged_all = None if converged is None else np.asarray(converged, bool)
        for chunk in _chunks(fit.n_devices):
            target = np.asarray(targets[chunk], np.float64)
            status = fit.status[chunk]
            ok, nu = status == FitStatus.OK, np.asarray(fit.nu[chunk], np.float64)
            g_t0 = np.asarray(fit.g_t0_us[chunk], np.float64)
            programmed = target > 0
            far_us = limits.far_sigmas * model.sigma_prog_us(target)
            with np.errstate(invalid="ignore"):
                far = np.abs(g_t0 - target) > far_us
                constant = np.abs(nu) < limits.nu_constant_max
            conv = ~(far & ok) if converged_all is None else converged_all[chunk]
            stuck = programmed & ok & constant & (far | ~conv)
            dead = (target > far_us) & (status == FitStatus.NO_SIGNAL)
            non_converged = programmed & ~conv
            usable = programmed & ok & conv & ~stuck
            bin_of = _bin_of(target, self.bin_width_us, self.n_bins)
            self.n_programmed += np.bincount(bin_of[programmed], minlength=self.n_bins)
            used = np.flatnonzero(usable)
            if used.size:
                self.moments.add(bin_of[used], self._quantities(fit, chunk, used, target, rel_noise_model))
            for kind, mask in (("stuck", stuck), ("dead", dead), ("non_converged", non_converged)):
                self.found[kind].append(self.n_devices + chunk.start + np.flatnonzero(mask))
            self.n_reset += int(programmed.size - np.count_nonzero(programmed))
        self.n_devices += fit.n_devices
        self.t0_s = fit.t0_s

    def _quantities(
        self, fit: DriftFit, chunk: slice, used: npt.NDArray[np.intp], target: npt.NDArray[np.float64],
        rel_noise_model: npt.NDArray[np.floating],
    ) -> npt.NDArray[np.float64]:  # fmt: skip
        """The `_QUANTITIES` of the chunk's usable devices, one row each."""
        model = self.model
        g_t = target[used]

        def of(values: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
            return np.asarray(values[chunk][used], np.float64)

        values = np.empty((len(_QUANTITIES), used.size), np.float64)
        row = dict(zip(_QUANTITIES, values, strict=True))
        row["folded_mean"][:], row["folded_var"][:] = _folded_normal_moments(
            model.drift_mu(g_t), model.drift_sigma(g_t)
        )
        row["g_t"][:] = g_t
        row["log_x"][:] = np.log(g_t / model.g_max_us)
        row["error"][:] = of(fit.g_t0_us) - g_t
        row["nu"][:] = of(fit.nu)
        row["g_t0_fit_var"][:] = of(fit.g_t0_stderr_us) ** 2
        row["nu_fit_var"][:] = of(fit.nu_stderr) ** 2
        row["model_prog_var"][:] = model.sigma_prog_us(g_t) ** 2
        row["read_noise_sq"][:] = of(fit.residual_std) ** 2
        row["model_read_noise_sq"][:] = np.asarray(rel_noise_model[chunk][used], np.float64) ** 2
        return values

    def finish(
        self,
        nu: npt.NDArray[np.floating],
        nu_stderr: npt.NDArray[np.floating],
        status: npt.NDArray[np.int8],
        target_g_us: npt.ArrayLike,
    ) -> ChipStatistics:
        """The statistics of every device added, given their ν, its standard error, fit
        status and targets (whole chip, in device order) for pass 2."""
        targets = np.asarray(target_g_us)
        if not nu.size == nu_stderr.size == status.size == targets.size == self.n_devices:
            raise ValueError(f"pass 2 needs the {self.n_devices} devices added, got {nu.size}")
        bins = [
            BinStatistics(b * self.bin_width_us, (b + 1) * self.bin_width_us, int(self.n_programmed[b]),
                          int(self.moments.n[b]), **self.moments.statistics(b, self.correct_fit_error))
            for b in range(self.n_bins)
        ]  # fmt: skip
        # Pass 2: fast drifters, against their bin's μ_ν and σ_ν (NaN where a bin has none: never fast).
        limits = self.limits
        nu_mean = np.array([b.nu_mean for b in bins], np.float64)
        nu_sigma = np.array([b.nu_sigma for b in bins], np.float64)
        fast = []
        for chunk in _chunks(self.n_devices):
            target = np.asarray(targets[chunk], np.float64)
            nu_c, stderr = np.asarray(nu[chunk], np.float64), np.asarray(nu_stderr[chunk], np.float64)
            bin_of = _bin_of(target, self.bin_width_us, self.n_bins)
            spread = np.sqrt(nu_sigma[bin_of] ** 2 + stderr**2)
            with np.errstate(invalid="ignore"):
                above_bin = nu_c > nu_mean[bin_of] + limits.fast_sigmas * spread
                above_limit = nu_c - limits.fast_sigmas * stderr > limits.nu_fast_abs
            ok = status[chunk] == FitStatus.OK
            fast.append(chunk.start + np.flatnonzero((target > 0) & ok & (above_bin | above_limit)))
        return ChipStatistics(
            t0_s=self.t0_s,
            g_max_us=self.model.g_max_us,
            bin_width_us=self.bin_width_us,
            fit_error_corrected=self.correct_fit_error,
            n_devices=self.n_devices,
            n_reset_targets=self.n_reset,
            bins=bins,
            outliers=Outliers(
                stuck=_indices(self.found["stuck"]),
                dead=_indices(self.found["dead"]),
                fast_drifters=_indices(fast),
                non_converged=_indices(self.found["non_converged"]),
            ),
        )


def _chunks(n_devices: int) -> Iterator[slice]:
    for start in range(0, n_devices, _STATISTICS_CHUNK_DEVICES):
        yield slice(start, min(start + _STATISTICS_CHUNK_DEVICES, n_devices))


def _bin_of(target: npt.NDArray[np.float64], bin_width_us: float, n_bins: int) -> npt.NDArray[np.int64]:
    return np.minimum((target / bin_width_us).astype(np.int64), n_bins - 1)


# What one bin's `BinStatistics` needs, per usable device (a row each in `_BinMoments`).
_QUANTITIES = ("g_t", "log_x", "error", "nu", "g_t0_fit_var", "nu_fit_var", "model_prog_var",
               "folded_mean", "folded_var", "read_noise_sq", "model_read_noise_sq")  # fmt: skip


class _BinMoments:
    """Count, mean and sum of squared deviations of every quantity in every bin, merged
    chunk by chunk (Chan et al.): M2 = M2_a + M2_b + δ²·n_a·n_b/n with δ = mean_b − mean_a.
    A chunk's per-bin sums are one `bincount` over (quantity, bin) pairs."""

    def __init__(self, n_quantities: int, n_bins: int) -> None:
        self.n_bins = n_bins
        self.n = np.zeros(n_bins, np.float64)
        self.mean = np.zeros((n_quantities, n_bins), np.float64)
        self.m2 = np.zeros((n_quantities, n_bins), np.float64)

    def _per_bin(
        self, cell: npt.NDArray[np.intp], values: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        sums = np.bincount(cell, values.ravel(), self.mean.size)
        return np.asarray(sums, np.float64).reshape(self.mean.shape)

    def add(self, bin_of: npt.NDArray[np.intp], values: npt.NDArray[np.float64]) -> None:
        """`values` (n_quantities, n) of devices in bins `bin_of` (n,)."""
        n_b = np.bincount(bin_of, minlength=self.n_bins).astype(np.float64)
        cell = (bin_of[None, :] + self.n_bins * np.arange(values.shape[0])[:, None]).ravel()
        has = n_b > 0
        mean_b = np.zeros_like(self.mean)
        mean_b[:, has] = self._per_bin(cell, values)[:, has] / n_b[has]
        deviation = values - mean_b[:, bin_of]
        m2_b = self._per_bin(cell, deviation * deviation)
        n = self.n + n_b
        delta = (mean_b - self.mean)[:, has]
        self.m2[:, has] += m2_b[:, has] + delta * delta * (self.n[has] * n_b[has] / n[has])
        self.mean[:, has] += delta * (n_b[has] / n[has])
        self.n = n

    def statistics(self, b: int, correct_fit_error: bool) -> dict[str, float]:
        """Bin `b`'s measured and model values (NaN for a bin without usable devices)."""
        if self.n[b] == 0:
            measured = (f.name for f in fields(BinStatistics) if f.name not in _BIN_IDENTITY)
            return dict.fromkeys(measured, math.nan)
        mean = dict(zip(_QUANTITIES, self.mean[:, b].tolist(), strict=True))
        var = dict(zip(_QUANTITIES, (self.m2[:, b] / self.n[b]).tolist(), strict=True))  # as `np.var`
        prog_var, nu_var = var["error"], var["nu"]
        if correct_fit_error:
            prog_var -= mean["g_t0_fit_var"]
            nu_var -= mean["nu_fit_var"]
        return {
            "target_mean_us": mean["g_t"],
            "mean_log_x": mean["log_x"],
            "var_log_x": var["log_x"],
            "prog_bias_us": mean["error"],
            "prog_sigma_us": _unresolved_if_negative(prog_var),
            "model_prog_sigma_us": math.sqrt(mean["model_prog_var"]),
            "nu_mean": mean["nu"],
            "nu_sigma": _unresolved_if_negative(nu_var),
            "model_nu_mean": mean["folded_mean"],
            "model_nu_sigma": math.sqrt(mean["folded_var"] + var["folded_mean"]),
            "read_noise_rel": math.sqrt(mean["read_noise_sq"]),
            "model_read_noise_rel": math.sqrt(mean["model_read_noise_sq"]),
        }


def _unresolved_if_negative(variance: float) -> float:
    """A spread, or NaN where the fit's own error exceeds the measured scatter (e.g. low-G
    bins read once per point): 0 would claim a perfect chip, NaN says "not resolved"."""
    return math.sqrt(variance) if variance > 0 else math.nan


def model_relative_read_noise(fit: FittedLines, t_s: np.ndarray, model: PCMModel) -> npt.NDArray[np.float64]:
    """RMS over a device's reads of the §4 law σ_read/G = Q_s(G(t0))·sqrt(ln((t+t_read)/2t_read)).

    G(t0) is the device's own fitted intercept, so this isolates the read-noise law from the
    programming and drift statistics. Q_s is the device's, so the RMS is Q_s times the RMS
    of the time factor; the time factor is evaluated on float32 ages (its logarithm moves
    by < 1e-7 from float64 ones) and averaged in float64.
    """
    n_dev = fit.n_devices
    t = t_s[:, None] if t_s.ndim == 1 else t_s
    out = np.empty(n_dev, np.float64)
    for start in range(0, n_dev, _CHUNK_DEVICES):
        cols = slice(start, min(start + _CHUNK_DEVICES, n_dev))
        t_chunk = t if t.shape[1] == 1 else t[:, cols]
        factor = model.read_time_factor(t_chunk.astype(np.float32))
        mean_square = np.einsum("ij,ij->j", factor, factor, dtype=np.float64) / t.shape[0]
        out[cols] = model.read_noise_q_s(fit.g_t0_us[cols]) * np.sqrt(mean_square)
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
