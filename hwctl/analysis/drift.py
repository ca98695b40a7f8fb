"""Per-device drift fits from stored readouts: ln G = ln G(t0) − ν·ln(t/t0).

Drift is a power law in time since *that device* was programmed (pcm-model.md §3), so
each device gets its own straight line in log-log space. The fit is ordinary least
squares in closed form: five running sums per device over the readouts (axis 0),
accumulated in float64 chunk by chunk, so a whole chip (~10⁶ devices × 20 reads)
fits in about a second without per-device Python.

Readings ≤ 0 (a RESET device read as 0, a clipped noisy read) cannot be logged; they
are masked out and every device reports how many points it used and a status flag.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hwctl.store.fits import FitStatus, FittedLines, Floats

DEFAULT_T0_S = 25.0
# Devices per chunk: 20 readouts × 4k devices × 8 B ≈ 650 kB per float64 array, so a chunk's
# temporaries stay in the core's cache (2× faster than 16k devices on this machine).
_CHUNK_DEVICES = 4_096

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DriftFit(FittedLines):
    """The fitted lines (`hwctl.store.fits.FittedLines`, what is stored) with the fit's own
    uncertainties, which chip statistics need; one entry per device, NaN where not OK."""

    residual_std: Floats  # of ln G around the line ≈ relative read noise
    nu_stderr: Floats  # standard error of ν (from the residuals)
    g_t0_stderr_us: Floats  # standard error of G(t0) (delta method)
    n_points: npt.NDArray[np.int32]


def fit_drift(
    g_us: npt.ArrayLike,
    t_s: npt.ArrayLike,
    t0_s: float = DEFAULT_T0_S,
    min_points: int = 3,
) -> DriftFit:
    """Fit ν and G(t0) for every device from readouts `g_us` (n_readouts, n_devices).

    `t_s` is the time since each device was programmed, shape (n_readouts, n_devices),
    or (n_readouts,) when the whole array was programmed at once.
    """
    g = np.asarray(g_us)
    t = np.asarray(t_s)
    if g.ndim != 2:
        raise ValueError(f"conductances must be (n_readouts, n_devices), got shape {g.shape}")
    if t.shape not in (g.shape, (g.shape[0],)):
        raise ValueError(f"times of shape {t.shape} do not match readouts of shape {g.shape}")
    if t0_s <= 0:
        raise ValueError(f"t0 must be positive seconds, got {t0_s}")
    if min_points < 2:
        raise ValueError("a line needs at least 2 points")
    n_dev = g.shape[1]
    fit = _empty_fit(n_dev, t0_s)
    sums = np.empty((8, min(n_dev, _CHUNK_DEVICES)), np.float64)  # reused chunk by chunk
    t_col = t[:, None] if t.ndim == 1 else None
    for start in range(0, n_dev, _CHUNK_DEVICES):
        stop = min(start + _CHUNK_DEVICES, n_dev)
        t_chunk = t_col if t_col is not None else t[:, start:stop]
        chunk_sums = sums[:, : stop - start]
        _accumulate(g[:, start:stop], t_chunk, np.log(t0_s), chunk_sums)
        _solve(chunk_sums, min_points, fit, slice(start, stop))
    return fit


def _empty_fit(n_devices: int, t0_s: float) -> DriftFit:
    floats = (np.empty(n_devices, np.float64) for _ in range(6))
    nu, g_t0, r_squared, residual_std, nu_stderr, g_t0_stderr = floats
    return DriftFit(t0_s, nu, g_t0, r_squared, np.empty(n_devices, np.int8), residual_std, nu_stderr,
                    g_t0_stderr, np.empty(n_devices, np.int32))  # fmt: skip


def _accumulate(g: np.ndarray, t: np.ndarray, ln_t0: float, out: FloatArray) -> None:
    """Per-device sums over readouts of x = ln(t/t0), y = ln G (masked), into `out`.

    Rows: n, Σx, Σy, Σxx, Σxy, Σyy, then Σ c_k²e_k² and Σ w_k²e_k², the residual-weighted
    (sandwich) variances of intercept and slope. Read noise grows with t, so the pooled
    residual variance misjudges the intercept's error by tens of %; the sandwich form
    does not assume equal noise on every read. With u = x − x̄ and e the residual,
    w = u/Sxx_c and c = 1/n − x̄·w, so both are sums of e², u·e² and u²·e²:
    Σw²e² = Σu²e²/Sxx_c², Σc²e² = Σe²/n² − 2x̄·Σue²/(n·Sxx_c) + x̄²·Σu²e²/Sxx_c².
    ln G and ln t are taken in the inputs' own precision (float32 readouts and ages:
    float32 logs, as exact as the inputs), sums in float64.
    """
    valid = g > 0
    valid &= t > 0
    weight = valid.astype(np.float64)
    y = np.log(np.where(valid, g, g.dtype.type(1))).astype(np.float64, copy=False)
    x = np.log(np.where(valid, t, t.dtype.type(1))).astype(np.float64, copy=False)
    x -= ln_t0
    x *= weight
    n = out[0]
    n[:] = weight.sum(axis=0)
    out[1] = x.sum(axis=0)
    out[2] = y.sum(axis=0)
    out[3] = np.einsum("ij,ij->j", x, x)
    out[4] = np.einsum("ij,ij->j", x, y)
    out[5] = np.einsum("ij,ij->j", y, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_mean = out[1] / n
        sxx_c = out[3] - out[1] * x_mean
        slope = (out[4] - x_mean * out[2]) / sxx_c
        intercept = out[2] / n - slope * x_mean
        # y becomes the squared residual e², x the centred u = x − x̄ (e² = 0 where masked).
        y -= intercept
        y -= slope * x
        y *= y
        y *= weight
        x -= x_mean
        sum_e2 = y.sum(axis=0)
        y *= x
        sum_u_e2 = y.sum(axis=0)
        sum_u2_e2 = np.einsum("ij,ij->j", x, y)
        out[7] = sum_u2_e2 / (sxx_c * sxx_c)
        out[6] = sum_e2 / (n * n) - 2 * x_mean * sum_u_e2 / (n * sxx_c) + x_mean * x_mean * out[7]


def _solve(sums: FloatArray, min_points: int, fit: DriftFit, devices: slice) -> None:
    """The lines of `devices` from their sums, written into `fit`."""
    n, sx, sy, sxx, sxy, syy, intercept_hc, slope_hc = sums
    with np.errstate(divide="ignore", invalid="ignore"):
        sxx_c = sxx - sx * sx / n
        sxy_c = sxy - sx * sy / n
        syy_c = syy - sy * sy / n
        slope = sxy_c / sxx_c
        intercept = (sy - slope * sx) / n
        ss_res = np.maximum(syy_c - slope * sxy_c, 0.0)
        dof_scale = np.where(n > 2, n / (n - 2), np.nan)  # HC1: residuals lost 2 dof to the fit
        resid_var = ss_res / n * dof_scale
        # Sums of squares can cancel to a tiny negative number in rounding; a variance is ≥ 0.
        nu_var = np.maximum(slope_hc * dof_scale, 0.0)
        intercept_var = np.maximum(intercept_hc * dof_scale, 0.0)
        r_squared = np.where(syy_c > 0, 1.0 - ss_res / syy_c, np.nan)
    status = fit.status[devices]
    status[:] = FitStatus.OK
    status[n < min_points] = FitStatus.TOO_FEW_POINTS
    status[n == 0] = FitStatus.NO_SIGNAL
    spread_free = (n >= min_points) & ~(sxx_c > 1e-12 * np.maximum(sxx, 1.0))
    status[spread_free] = FitStatus.NO_TIME_SPREAD
    bad = status != FitStatus.OK
    g_t0 = np.exp(intercept)
    for name, values in (("nu", -slope), ("g_t0_us", g_t0), ("r_squared", r_squared),
                         ("residual_std", np.sqrt(resid_var)), ("nu_stderr", np.sqrt(nu_var)),
                         ("g_t0_stderr_us", g_t0 * np.sqrt(intercept_var))):  # fmt: skip
        column = getattr(fit, name)[devices]
        column[:] = values
        column[bad] = np.nan
    fit.n_points[devices] = n
