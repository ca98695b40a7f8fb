"""Per-device drift fits: exact on clean data, honest about errors, robust to zeros."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.base import Geometry
from drivers.sim.board import SimBoard
from hwctl.analysis.drift import FitStatus, fit_drift
from hwctl.schedule import log_spaced_offsets_s
from tests.analysis.conftest import FittedChip


def test_fit_is_exact_on_noise_free_power_law_data() -> None:
    rng = np.random.default_rng(0)
    nu, g_t0 = rng.uniform(0.0, 0.2, 500), rng.uniform(0.5, 25.0, 500)
    t_s = np.geomspace(25.0, 86_400.0, 12)[:, None] * rng.uniform(1.0, 3.0, 500)
    fit = fit_drift(g_t0 * (t_s / 25.0) ** -nu, t_s)
    np.testing.assert_allclose(fit.nu, nu, atol=1e-9)
    np.testing.assert_allclose(fit.g_t0_us, g_t0, rtol=1e-9)
    assert np.all(fit.r_squared[nu > 1e-3] > 1 - 1e-9)
    assert np.all(fit.n_points == 12)


def test_zero_conductance_devices_get_nan_nu_and_a_flag_not_a_crash() -> None:
    t_s = np.geomspace(25.0, 3600.0, 6)
    g_us = np.outer((t_s / 25.0) ** -0.05, [10.0, 0.0, 10.0, 10.0])
    g_us[:4, 2] = 0.0  # only two usable reads
    g_us[1, 3] = 0.0  # one read clipped at zero: fitted from the other five
    fit = fit_drift(g_us, t_s)
    assert fit.status.tolist() == [FitStatus.OK, FitStatus.NO_SIGNAL, FitStatus.TOO_FEW_POINTS, FitStatus.OK]
    assert np.isnan(fit.nu[1]) and np.isnan(fit.nu[2])
    assert fit.n_points.tolist() == [6, 0, 2, 5]
    assert fit.nu[3] == pytest.approx(0.05)


def test_reads_all_at_one_time_cannot_give_a_slope() -> None:
    fit = fit_drift(np.full((4, 2), 5.0), np.full((4, 2), 100.0))
    assert (fit.status == FitStatus.NO_TIME_SPREAD).all()


def test_mismatched_times_are_rejected() -> None:
    with pytest.raises(ValueError, match="do not match"):
        fit_drift(np.ones((5, 3)), np.ones(4))


def test_reported_fit_errors_match_the_actual_scatter_of_estimates(default_chip: FittedChip) -> None:
    fit, truth = default_chip.fit, default_chip.readouts
    mid = fit.ok & (default_chip.target_g_us > 5.0)
    actual_nu_var = np.var(fit.nu[mid] - truth.nu[mid])
    actual_g_var = np.var(fit.g_t0_us[mid] - truth.g_t0_us[mid])
    assert np.mean(fit.nu_stderr[mid] ** 2) == pytest.approx(actual_nu_var, rel=0.15)
    assert np.mean(fit.g_t0_stderr_us[mid] ** 2) == pytest.approx(actual_g_var, rel=0.15)


def test_fit_recovers_each_devices_drift_on_a_simulated_board() -> None:
    board = SimBoard(Geometry(tiles=1, rows=80, cols=128), seed=3)
    n = board.geometry().n_devices
    everyone = np.arange(n, dtype=np.uint32)
    board.reset(everyone)
    amplitudes_ua = np.random.default_rng(4).uniform(90.0, 200.0, n).astype(np.float32)
    halves = np.array_split(everyone, 2)  # programmed 40 s apart: each device its own clock
    for part in halves:
        board.set_pulse(part, amplitudes_ua[part])
        board.clock.advance(40.0)
    programmed_s = board.array.t_programmed_s.copy()
    reads, times = [], []
    for offset_s in log_spaced_offsets_s(first_s=30.0, points=10):
        board.clock.advance(max(offset_s - (board.board_time_s() - programmed_s.min()), 0.0))
        reads.append(board.read_block(everyone))
        times.append(board.board_time_s() - programmed_s)
    fit = fit_drift(np.array(reads), np.array(times))
    true_nu = board.array.drift_nu.astype(np.float64)
    bright = fit.ok & (board.array.g_t0_us > 5.0)
    assert bright.sum() > n // 2
    error = fit.nu[bright] - true_nu[bright]
    assert abs(error.mean()) < 0.003
    assert np.var(error) == pytest.approx(np.mean(fit.nu_stderr[bright] ** 2), rel=0.15)
