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
# Devices per chunk: 20 readouts × 16k devices × 8 B ≈ 2.5 MB per float64 array.
_CHUNK_DEVICES = 16_384

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
    sums = np.empty((8, n_dev), np.float64)
    t_col = t[:, None] if t.ndim == 1 else None
    for start in range(0, n_dev, _CHUNK_DEVICES):
        stop = min(start + _CHUNK_DEVICES, n_dev)
        t_chunk = t_col if t_col is not None else t[:, start:stop]
        _accumulate(g[:, start:stop], t_chunk, np.log(t0_s), sums[:, start:stop])
    return _solve(sums, t0_s, min_points)


def _accumulate(g: np.ndarray, t: np.ndarray, ln_t0: float, out: FloatArray) -> None:
    """Per-device sums over readouts of x = ln(t/t0), y = ln G (masked), into `out`.

    Rows: n, Σx, Σy, Σxx, Σxy, Σyy, then Σ c_k²e_k² and Σ w_k²e_k², the residual-weighted
    (sandwich) variances of intercept and slope. Read noise grows with t, so the pooled
    residual variance misjudges the intercept's error by tens of %; the sandwich form
    does not assume equal noise on every read.
    """
    valid = (g > 0) & (t > 0)
    shape = valid.shape
    y = np.zeros(shape, np.float64)
    np.log(g, out=y, where=valid, dtype=np.float64)
    x = np.zeros(shape, np.float64)
    np.log(np.broadcast_to(t, shape), out=x, where=valid, dtype=np.float64)
    np.subtract(x, ln_t0, out=x, where=valid)
    n = out[0]
    n[:] = np.count_nonzero(valid, axis=0)
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
        # y becomes the residual, x the slope weight w_k = (x_k − x̄)/Sxx_c.
        y -= intercept
        y -= slope * x
        y *= valid
        x -= x_mean
        x *= valid
        x /= sxx_c
        y *= y
        out[7] = np.einsum("ij,ij,ij->j", x, x, y)
        x *= -x_mean
        x += 1.0 / n
        x *= valid
        out[6] = np.einsum("ij,ij,ij->j", x, x, y)


def _solve(sums: FloatArray, t0_s: float, min_points: int) -> DriftFit:
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
        nu_var = slope_hc * dof_scale
        intercept_var = intercept_hc * dof_scale
        r_squared = np.where(syy_c > 0, 1.0 - ss_res / syy_c, np.nan)
    status = np.full(n.shape, FitStatus.OK, np.int8)
    status[n < min_points] = FitStatus.TOO_FEW_POINTS
    status[n == 0] = FitStatus.NO_SIGNAL
    spread_free = (n >= min_points) & ~(sxx_c > 1e-12 * np.maximum(sxx, 1.0))
    status[spread_free] = FitStatus.NO_TIME_SPREAD
    bad = status != FitStatus.OK
    g_t0 = np.exp(intercept)

    def masked(values: FloatArray) -> FloatArray:
        values = np.asarray(values, np.float64)
        values[bad] = np.nan
        return values

    return DriftFit(
        t0_s=t0_s,
        nu=masked(-slope),
        g_t0_us=masked(g_t0),
        r_squared=masked(r_squared),
        residual_std=masked(np.sqrt(resid_var)),
        nu_stderr=masked(np.sqrt(nu_var)),
        g_t0_stderr_us=masked(g_t0 * np.sqrt(intercept_var)),
        n_points=n.astype(np.int32),
        status=status,
    )
