"""A chip's worth of readouts drawn from the model equations, fitted once per session."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from drivers.pcm_model import PCMModel
from hwctl.analysis.drift import DriftFit, fit_drift
from hwctl.analysis.synthetic import SyntheticReadouts, synthetic_readouts
from hwctl.schedule import log_spaced_offsets_s


@dataclass(frozen=True)
class FittedChip:
    target_g_us: np.ndarray
    readouts: SyntheticReadouts
    fit: DriftFit


def fitted_chip(model: PCMModel, n_devices: int = 20_000, seed: int = 7) -> FittedChip:
    target = np.random.default_rng(seed).uniform(0.0, model.g_max_us, n_devices)
    readouts = synthetic_readouts(
        target, log_spaced_offsets_s(points=20), model, seed=seed + 1, programming_spread_s=30.0
    )
    return FittedChip(target, readouts, fit_drift(readouts.g_us, readouts.t_s))


@pytest.fixture(scope="session")
def default_chip() -> FittedChip:
    return fitted_chip(PCMModel())
