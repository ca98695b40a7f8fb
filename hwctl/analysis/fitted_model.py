"""A `PCMModel` fitted to one chip's statistics, so the simulator can play that chip.

The fit keeps the simulator's parameter form (pcm-model.md §2–§4) and changes only
what the measured bins determine:

- σ_prog(x) = c0 + c1·x + c2·x², x = G_T/G_max: weighted quadratic fit to the bins'
  programming σ at their mean target.
- μ_ν = clip(a·ln x + b, lo, hi) and σ_ν = clip(c·ln x + d, lo, hi): least squares on
  the bin means and spreads of ν, each bin predicted by averaging the law over targets
  spread evenly across the bin (the law is steep at low G, so a bin is not one point),
  with a weak pull towards the base values so that directions no bin constrains (e.g.
  the upper μ clip, reached only below 0.2 µS) stay put. The folding ν = |μ + σξ| is
  neglected (it moves bin means by < 2 %).
- read_noise_q: the base value scaled by the measured/model ratio of relative read
  noise (linear in q away from Q_s's cap).
- Only bins whose single reads are quiet enough for unbiased log-space fits are used
  (below ~2.5 µS a read is ~50 % noise and often clips at 0).
- relax_noise_coeffs_us: the simulator's σ_prog is not drawn directly; it is the
  program-and-verify residual plus a relaxation drawn after the last pulse. Assuming
  the verify residual is a property of the algorithm, not the chip, it keeps its base
  variance, so relax² = measured σ_prog² − (base σ_prog² − base σ_relax²), refitted as
  a quadratic in x.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from drivers.pcm_model import PCMModel
from hwctl.analysis.statistics import BinStatistics, ChipStatistics

_QUADRATURE_POINTS = 65
_SMALL_READ_NOISE = 0.2
_PRIOR_WEIGHT = 1.0
_X_GRID = np.linspace(0.0, 1.0, 101)

LogLaw = tuple[tuple[float, float], tuple[float, float]]  # (slope, offset), (clip lo, clip hi)


def fit_model(stats: ChipStatistics, base: PCMModel | None = None) -> PCMModel:
    """`base` (the model `stats` was computed against) with this chip's statistics."""
    base = base or PCMModel()
    bins = [b for b in stats.bins if b.n_used > 0 and b.model_read_noise_rel < _SMALL_READ_NOISE]
    if len(bins) < 3:
        raise ValueError(f"need at least 3 populated, low-noise target bins to fit a model, got {len(bins)}")
    prog = _fit_prog_coeffs(bins, base.g_max_us)
    mu_ab, mu_clip = _fit_log_law(
        bins,
        base,
        lambda law: np.mean(law[1], axis=1),
        [b.nu_mean for b in bins],
        (base.drift_mu_coeffs, base.drift_mu_clip),
    )
    mu = _clipped_log_law(base, mu_ab, mu_clip)

    def predicted_sigma(law: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        mu_q, sigma_q = law
        return np.sqrt(np.mean(sigma_q**2 + mu_q**2, axis=1) - np.mean(mu_q, axis=1) ** 2)

    sigma_ab, sigma_clip = _fit_log_law(
        bins,
        base,
        predicted_sigma,
        [b.nu_sigma for b in bins],
        (base.drift_sigma_coeffs, base.drift_sigma_clip),
        companion=mu,
    )
    return replace(
        base,
        prog_noise_coeffs_us=prog,
        relax_noise_coeffs_us=_relax_coeffs(prog, base),
        drift_mu_coeffs=mu_ab,
        drift_mu_clip=mu_clip,
        drift_sigma_coeffs=sigma_ab,
        drift_sigma_clip=sigma_clip,
        read_noise_q=_fit_read_noise_q(bins, base),
    )


def export_fitted_model(stats: ChipStatistics, path: str | Path, base: PCMModel | None = None) -> PCMModel:
    """Fit and write JSON for `hwctl sim-chip --model PATH`."""
    model = fit_model(stats, base)
    model.to_json(path)
    return model


def eta_from_fit(stats: ChipStatistics) -> float:
    """Noise-injection strength for training: median programming σ over bins / G_max (§7)."""
    sigmas = [b.prog_sigma_us for b in stats.bins if b.n_used > 0 and math.isfinite(b.prog_sigma_us)]
    if not sigmas:
        raise ValueError("no populated target bin: cannot estimate the programming noise")
    return float(np.median(sigmas)) / stats.g_max_us


def _fit_prog_coeffs(bins: list[BinStatistics], g_max_us: float) -> tuple[float, float, float]:
    x = np.array([b.target_mean_us / g_max_us for b in bins])
    sigma = np.array([b.prog_sigma_us for b in bins])
    weight = np.sqrt([b.n_used for b in bins])
    c2, c1, c0 = np.polyfit(x, sigma, 2, w=weight)
    return float(c0), float(c1), float(c2)


def _relax_coeffs(prog: tuple[float, float, float], base: PCMModel) -> tuple[float, float, float]:
    g_us = _X_GRID * base.g_max_us
    verify_var = base.sigma_prog_us(g_us) ** 2 - base.sigma_relax_us(g_us) ** 2
    measured = replace(base, prog_noise_coeffs_us=prog).sigma_prog_us(g_us)
    relax = np.sqrt(np.maximum(measured**2 - verify_var, 0.0))
    c2, c1, c0 = np.polyfit(_X_GRID, relax, 2)
    return float(c0), float(c1), float(c2)


def _clipped_log_law(base: PCMModel, coeffs: tuple[float, float], clip: tuple[float, float]) -> PCMModel:
    """A model whose `drift_mu` evaluates clip(a·ln x + b, lo, hi): the form both ν laws share."""
    return replace(base, drift_mu_coeffs=coeffs, drift_mu_clip=clip)


def _fit_log_law(
    bins: list[BinStatistics],
    base: PCMModel,
    predict: Callable[[tuple[np.ndarray, np.ndarray]], np.ndarray],
    observed: list[float],
    start: LogLaw,
    companion: PCMModel | None = None,
) -> LogLaw:
    """Fit (slope, offset, lo, hi) of clip(slope·ln x + offset, lo, hi) to per-bin values.

    `predict` maps (μ_ν, law), both evaluated on each bin's quadrature targets, to bin
    values; μ_ν comes from `companion` when fitting σ_ν, else it is the law itself.
    """
    g_q = np.stack([np.linspace(b.target_lo_us, b.target_hi_us, _QUADRATURE_POINTS) for b in bins])
    mu_q = companion.drift_mu(g_q) if companion is not None else None
    weight = np.sqrt([b.n_used for b in bins])
    target = np.asarray(observed)
    scale = float(np.mean(np.abs(target)))

    def residuals(p: np.ndarray) -> np.ndarray:
        law = _clipped_log_law(base, (p[0], p[1]), (p[2], p[3])).drift_mu(g_q)
        pair = (mu_q, law) if mu_q is not None else (law, law)
        prior = _PRIOR_WEIGHT * (p - p0) / np.abs(p0)
        return np.concatenate([weight * (predict(pair) - target) / scale, prior])

    (a, b), (lo, hi) = start
    p0 = np.array([a, b, lo, hi])
    result = least_squares(residuals, p0, diff_step=1e-3)
    p = result.x
    return (float(p[0]), float(p[1])), (float(min(p[2], p[3])), float(max(p[2], p[3])))


def _fit_read_noise_q(bins: list[BinStatistics], base: PCMModel) -> float:
    measured = np.array([b.read_noise_rel for b in bins])
    modelled = np.array([b.model_read_noise_rel for b in bins])
    n = np.array([b.n_used for b in bins])
    return base.read_noise_q * float(np.sum(n * measured * modelled) / np.sum(n * modelled**2))
