"""The audit's judge of a readout against the board: the drift/noise band of the device
model, which a drifted re-read passes and a blank, risen or too fast fallen one fails; a
readout of other devices does not agree (too few of its devices inside)."""

from __future__ import annotations

import numpy as np

from tests.faults.audit import AGREEING_FRACTION, within_drift_band

G_US = np.linspace(5.0, 25.0, 200).astype(np.float32)
ZERO_AGE_S = np.zeros(G_US.size)


def aged(t_s: float) -> np.ndarray:
    return np.full(G_US.size, t_s)


def test_devices_drifted_with_a_plausible_nu_and_read_noise_are_inside() -> None:
    rng = np.random.default_rng(0)
    nu = rng.normal(0.05, 0.02, G_US.size).clip(0.0, 0.15)
    later_us = G_US * (1000.0 / 20.0) ** -nu * rng.normal(1.0, 0.03, G_US.size)
    assert within_drift_band(G_US, ZERO_AGE_S, later_us.astype(np.float32), aged(1000.0)).mean() > 0.99


def test_a_blank_board_is_outside() -> None:
    blank_us = np.abs(np.random.default_rng(1).normal(0.0, 0.05, G_US.size)).astype(np.float32)
    assert not within_drift_band(G_US, ZERO_AGE_S, blank_us, aged(100.0)).any()


def test_other_devices_in_their_place_do_not_agree_as_a_readout() -> None:
    foreign_us = np.random.default_rng(2).permutation(G_US)
    assert within_drift_band(G_US, ZERO_AGE_S, foreign_us, aged(100.0)).mean() < AGREEING_FRACTION


def test_conductance_that_rose_or_fell_faster_than_drift_allows_is_outside() -> None:
    assert not within_drift_band(G_US, ZERO_AGE_S, 1.5 * G_US, aged(100.0)).any()
    assert not within_drift_band(G_US, ZERO_AGE_S, 0.5 * G_US, aged(25.0)).any()
