"""A fitted PCMModel recovers a different chip's laws and plays it back in the simulator."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from drivers.base import Geometry
from drivers.pcm_model import PCMModel
from drivers.sim.board import SimBoard
from hwctl.analysis.fitted_model import eta_from_fit, export_fitted_model, fit_model
from hwctl.analysis.statistics import ChipStatistics, chip_statistics
from tests.analysis.conftest import FittedChip, fitted_chip

# A chip noisier and faster-drifting than the paper's.
OTHER_CHIP = replace(
    PCMModel(),
    prog_noise_coeffs_us=(0.35, 2.3, -1.5),
    drift_mu_coeffs=(-0.02, 0.02),
    drift_mu_clip=(0.06, 0.12),
    drift_sigma_coeffs=(-0.01, 0.0),
    read_noise_q=0.012,
)
PROBE_G_US = np.array([5.0, 10.0, 15.0, 20.0, 25.0])


def statistics_of(chip: FittedChip) -> ChipStatistics:
    return chip_statistics(chip.fit, chip.target_g_us, chip.readouts.t_s)


@pytest.fixture(scope="module")
def other_chip_fit() -> PCMModel:
    return fit_model(statistics_of(fitted_chip(OTHER_CHIP)))


def test_fit_recovers_another_chips_laws(other_chip_fit: PCMModel) -> None:
    fitted, true = other_chip_fit, OTHER_CHIP
    np.testing.assert_allclose(fitted.sigma_prog_us(PROBE_G_US), true.sigma_prog_us(PROBE_G_US), rtol=0.15)
    np.testing.assert_allclose(fitted.drift_mu(PROBE_G_US), true.drift_mu(PROBE_G_US), rtol=0.1)
    np.testing.assert_allclose(fitted.drift_sigma(PROBE_G_US), true.drift_sigma(PROBE_G_US), rtol=0.2)
    assert fitted.read_noise_q == pytest.approx(true.read_noise_q, rel=0.1)


def test_relaxation_keeps_the_verify_residual_of_the_base_model(other_chip_fit: PCMModel) -> None:
    base, g_us = PCMModel(), PROBE_G_US
    verify_var = base.sigma_prog_us(g_us) ** 2 - base.sigma_relax_us(g_us) ** 2
    implied_var = other_chip_fit.sigma_prog_us(g_us) ** 2 - other_chip_fit.sigma_relax_us(g_us) ** 2
    np.testing.assert_allclose(implied_var, verify_var, rtol=0.05, atol=0.02)


def test_exported_model_round_trips_and_drives_a_simulated_board(tmp_path: Path) -> None:
    path = tmp_path / "fitted.json"
    exported = export_fitted_model(statistics_of(fitted_chip(OTHER_CHIP)), path)
    loaded = PCMModel.from_json(path)
    assert loaded == exported
    board = SimBoard(Geometry(tiles=1, rows=4, cols=8), model=loaded)
    assert board.array.model.drift_mu_coeffs == exported.drift_mu_coeffs


def test_a_chip_simulated_from_the_fit_reproduces_the_fitted_sigma(other_chip_fit: PCMModel) -> None:
    replay = fitted_chip(other_chip_fit, seed=21)
    stats = chip_statistics(replay.fit, replay.target_g_us, replay.readouts.t_s, model=other_chip_fit)
    for b in stats.bins[1:]:
        assert b.prog_sigma_us == pytest.approx(b.model_prog_sigma_us, rel=0.1)


def test_eta_of_the_papers_chip_is_about_3_8_percent(default_chip: FittedChip) -> None:
    assert eta_from_fit(statistics_of(default_chip)) == pytest.approx(0.038, abs=0.003)
