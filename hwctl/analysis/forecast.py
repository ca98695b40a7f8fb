"""Accuracy beyond the measured schedule: 1 week, 1 month, 1 year after programming.

As Joshi et al. (2020) did, the forecast does not extrapolate the accuracy curve; it
extrapolates the devices. Each device's fitted line G(t) = G(t0)·(t/t0)^−ν is evaluated
at the future time, single-read noise is drawn from the (fitted) model's read-noise
law (pcm-model.md §4), and the network rebuilt from those conductances is evaluated
with every compensation method exactly as a measured readout would be. Records carry
`kind="forecast"` so that nobody mistakes them for measurements.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from drivers.pcm_model import PCMModel
from hwctl.analysis.spread import AccuracyRead, AccuracyRecord, summarise
from hwctl.nn.compensation import compensation_method
from hwctl.nn.evaluation import Images, ReadoutEvaluator
from hwctl.schedule import DAY_S, duration_label
from hwctl.store.fits import FittedLines
from hwctl.vocabulary import CompensationMethod

FORECAST_HORIZONS_S: dict[str, float] = {
    "1 week": 7 * DAY_S,
    "1 month": 30 * DAY_S,
    "1 year": 365 * DAY_S,
}
# Synthetic reads per horizon: their spread is the read noise's share of the accuracy's.
FORECAST_DRAWS = 3


def forecast_conductances_us(
    fit: FittedLines, t_s: float, model: PCMModel | None = None, seed: int = 0
) -> npt.NDArray[np.float32]:
    """One synthetic readout of every fitted device at `t_s` after its programming.

    Drift starts at t0 (as in the simulator and on the chip, relaxation dominates before
    it); devices without a fit (RESET or dead, every reading 0) read as 0 µS. Reads are
    clipped at 0 like the chip's.
    """
    if t_s <= 0:
        raise ValueError(f"forecast time must be positive seconds, got {t_s}")
    m = model or PCMModel()
    age = max(t_s, fit.t0_s) / fit.t0_s
    g_t0 = np.nan_to_num(fit.g_t0_us, nan=0.0)
    g = g_t0 * age ** -np.nan_to_num(fit.nu)
    sigma = g * m.read_noise_q_s(g_t0) * m.read_time_factor(np.full(g.shape, t_s))  # Q_s at G(t0) (§4)
    g = g + sigma * np.random.default_rng(seed).standard_normal(g.size)
    return np.maximum(g, 0.0).astype(np.float32)


def forecast_accuracy(
    evaluator: ReadoutEvaluator,
    data: Images,
    fit: FittedLines,
    horizons_s: Mapping[str, float] = FORECAST_HORIZONS_S,
    methods: Sequence[str] = tuple(CompensationMethod),
    model: PCMModel | None = None,
    g_reference_us: npt.NDArray[np.floating] | None = None,
    seed: int = 0,
    draws: int = FORECAST_DRAWS,
) -> list[AccuracyRecord]:
    """Forecast accuracy per (horizon, method) from the per-device fits: the mean and spread
    over `draws` synthetic reads of the one programming the fits describe
    (`n_programmings` 1: a fit says nothing of how another programming would come out).

    `g_reference_us` is GDC's t0 reference; pass the measured one so the forecast
    compensates as the measurements did. Without it, a synthetic read at the fit's t0
    stands in. Each synthetic readout is shared by all methods, so methods differ only by
    their compensation.
    """
    if draws < 1:
        raise ValueError(f"a forecast needs at least one synthetic read per horizon, got {draws}")
    chosen = [compensation_method(m) for m in methods]
    if fit.n_devices != evaluator.device_map.n_devices:
        raise ValueError(f"{fit.n_devices} fitted devices for a network of {evaluator.device_map.n_devices}")
    reference = g_reference_us
    if reference is None and CompensationMethod.GDC in chosen:
        reference = forecast_conductances_us(fit, fit.t0_s, model, seed=_seed(seed, -1))
    reads = []
    for k, (label, t_s) in enumerate(horizons_s.items()):
        for draw in range(draws):
            g_us = forecast_conductances_us(fit, t_s, model, seed=_seed(seed, k, draw))
            for method in chosen:
                result = evaluator.evaluate(data, g_us, method, reference, seed=seed)
                record = AccuracyRecord("forecast", float(t_s), method, result.accuracy, result.ci95_low,
                                        result.ci95_high, result.n_images, label)  # fmt: skip
                reads.append(AccuracyRead(0, float(t_s), draw, record))
    return summarise(reads)


def _seed(seed: int, horizon: int, draw: int = 0) -> int:
    """Independent, reproducible noise per horizon and draw (and for the GDC reference)."""
    return int(np.random.SeedSequence([seed, horizon + 1, draw]).generate_state(1)[0])


def horizon_label(t_s: float) -> str:
    """A readable duration for tables: '25 s', '3.2 h', '1 week'."""
    for label, value in FORECAST_HORIZONS_S.items():
        if math.isclose(t_s, value):
            return label
    return duration_label(t_s)
