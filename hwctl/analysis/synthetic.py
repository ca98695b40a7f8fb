"""Readouts drawn straight from the device-model equations (pcm-model.md §2–§4).

A known ground truth for the analysis: tests check that fits recover the model's
statistics, and the drift-fit benchmark uses it to build a chip-sized data set in
seconds, without running program-and-verify on a simulated board.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from drivers.pcm_model import PCMModel


@dataclass(frozen=True)
class SyntheticReadouts:
    g_us: npt.NDArray[np.float32]  # (n_readouts, n_devices), reads clipped at 0 like the chip
    t_s: npt.NDArray[np.float64]  # time since each device was programmed, same shape
    g_t0_us: npt.NDArray[np.float64]  # true state at t0
    nu: npt.NDArray[np.float64]  # true drift exponent


def synthetic_readouts(
    target_g_us: npt.ArrayLike,
    read_offsets_s: npt.ArrayLike,
    model: PCMModel | None = None,
    seed: int = 0,
    programming_spread_s: float = 0.0,
    read_noise: bool = True,
) -> SyntheticReadouts:
    """Read every device at `read_offsets_s` after t=0; device i was programmed at −u_i.

    `programming_spread_s` staggers programming times uniformly (u_i ∈ [0, spread)), as
    when a large array is programmed row by row, so each device has its own clock.
    """
    m = model or PCMModel()
    rng = np.random.default_rng(seed)
    target = np.asarray(target_g_us, np.float64)
    n = target.size
    g_t0 = np.maximum(target + m.sigma_prog_us(target) * rng.standard_normal(n), 0.0)
    g_t0[target <= 0] = np.abs(rng.normal(0.0, m.reset_sigma_us, int((target <= 0).sum())))
    nu = np.abs(m.drift_mu(target) + m.drift_sigma(target) * rng.standard_normal(n))
    offsets = np.asarray(read_offsets_s, np.float64)[:, None]
    t = offsets + rng.uniform(0.0, programming_spread_s, n)[None, :]
    g = g_t0 * (t / m.t0_s) ** -nu
    if read_noise:
        sigma = g * m.read_noise_q_s(g_t0) * m.read_time_factor(t)  # Q_s at G(t0) (§4)
        g += sigma * rng.standard_normal(g.shape)
    return SyntheticReadouts(np.maximum(g, 0.0).astype(np.float32), t, g_t0, nu)
