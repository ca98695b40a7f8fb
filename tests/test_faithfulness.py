"""The simulated chip, driven by the project's own program-and-verify, matches §9.

Statistical checks on 100k devices with targets uniform over 0–25 µS; fixed seeds,
but every assertion compares a measured statistic with the law as pcm-model.md
writes it, restated below independently of `drivers.sim.pcm`: a change to the
simulator's laws, constants or the loop moves only the measured side and fails here.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from drivers.base import Geometry
from drivers.pcm_model import PCMModel
from drivers.sim.board import SimBoard
from hwctl.program_verify import DeviceStatus, ProgrammingResult, program_and_verify

# -- pcm-model.md §2–§5, restated (never imported from the simulator) ----------------------
G_MAX_US = 25.0
T0_S = 25.0
T_READ_S = 250e-9


def paper_sigma_prog_us(g_us: np.ndarray) -> np.ndarray:
    x = g_us / G_MAX_US
    return 0.26348 + 1.9650 * x - 1.1731 * x**2


def paper_drift_mu(g_us: np.ndarray) -> np.ndarray:
    return np.clip(-0.0155 * np.log(np.maximum(g_us / G_MAX_US, 1e-7)) + 0.0244, 0.049, 0.1)


def paper_drift_sigma(g_us: np.ndarray) -> np.ndarray:
    return np.clip(-0.0125 * np.log(np.maximum(g_us / G_MAX_US, 1e-7)) - 0.0059, 0.008, 0.045)


def paper_read_noise_q(g_us: np.ndarray) -> np.ndarray:
    return np.minimum(0.0088 / np.maximum((g_us / G_MAX_US) ** 0.65, 1e-3), 0.2)


def paper_read_time_factor(t_s: float) -> float:
    return float(np.sqrt(np.log((t_s + T_READ_S) / (2 * T_READ_S))))


# -----------------------------------------------------------------------------------------
N_DEVICES = 100_000
BINS_US = np.arange(0.0, 27.5, 2.5)
DAY_S = 86_400.0
Programmed = tuple[SimBoard, ProgrammingResult]


@pytest.fixture(scope="module")
def programmed() -> Programmed:
    board = SimBoard(Geometry(1, 100, N_DEVICES // 100), seed=11)
    targets = np.random.default_rng(5).uniform(0.0, 25.0, N_DEVICES).astype(np.float32)
    result = program_and_verify(board, np.arange(N_DEVICES, dtype=np.uint32), targets)
    return board, result


def _mean_of_reads(board: SimBoard, addresses: np.ndarray, n: int = 16) -> np.ndarray:
    return np.mean([board.read_block(addresses) for _ in range(n)], axis=0)


def _bins(targets: np.ndarray) -> list[np.ndarray]:
    return [(targets >= lo) & (targets < hi) for lo, hi in itertools.pairwise(BINS_US)]


def test_programming_error_at_t0_follows_sigma_prog_per_bin(programmed: Programmed) -> None:
    board, result = programmed
    board.clock.advance(T0_S)
    g_t0 = _mean_of_reads(board, result.addresses)
    error = g_t0 - result.target_g_us
    assert abs(float(error.mean())) < 0.1
    for in_bin in _bins(result.target_g_us):
        expected = np.sqrt(np.mean(paper_sigma_prog_us(result.target_g_us[in_bin]) ** 2))
        assert error[in_bin].std() == pytest.approx(expected, rel=0.10)
        assert abs(float(error[in_bin].mean())) < 0.1


def test_nonzero_targets_converge_in_several_iterations(programmed: Programmed) -> None:
    _, result = programmed
    assert result.converged_fraction_nonzero >= 0.99
    assert 3.0 <= result.iterations_mean <= 10.0
    assert int(result.iterations.max()) <= 20
    high = result.target_g_us > 10.0
    # Never a one-shot "set to target": most devices need several pulse/verify rounds.
    assert np.median(result.iterations[high]) >= 3
    assert np.mean(result.iterations[high] == 1) < 0.15


def test_fitted_drift_exponent_follows_mu_and_sigma_per_bin(programmed: Programmed) -> None:
    board, result = programmed
    keep = result.target_g_us > 2.5  # below, 1/f noise swamps a 16-read fit
    addresses, targets = result.addresses[keep], result.target_g_us[keep]
    programmed_at_s = float(result.programmed_s[keep].max())
    assert programmed_at_s == float(result.programmed_s[keep].min())  # frozen virtual clock
    ages_s = np.geomspace(T0_S, DAY_S, 6)
    log_g = []
    for age_s in ages_s:
        board.clock.advance(max(0.0, programmed_at_s + age_s - board.board_time_s()))
        log_g.append(np.log(_mean_of_reads(board, addresses)))
    x = np.log(ages_s) - np.log(ages_s).mean()
    y = np.array(log_g)
    nu = -(x @ (y - y.mean(axis=0))) / (x @ x)
    residual = y - y.mean(axis=0) + np.outer(x, nu)
    fit_var = (residual**2).sum(axis=0) / (len(x) - 2) / (x @ x)
    for in_bin in _bins(targets)[1:]:
        assert nu[in_bin].mean() == pytest.approx(paper_drift_mu(targets[in_bin]).mean(), rel=0.05)
        spread = np.sqrt(max(nu[in_bin].var() - fit_var[in_bin].mean(), 0.0))
        expected = np.sqrt(np.mean(paper_drift_sigma(targets[in_bin]) ** 2))
        assert spread == pytest.approx(expected, rel=0.07)


@pytest.mark.parametrize("age_s", [3600.0, DAY_S, 365 * DAY_S], ids=["1h", "1day", "1year"])
def test_repeated_reads_spread_as_the_read_noise_law_at_the_programmed_state(age_s: float) -> None:
    """§9.4 with §4's Q_s taken at G(t0): the relative spread of repeated reads does not
    grow as drift lowers G (Q_s at the drifted G(t) gives 1.3–1.55× the law by 1 year)."""
    board = SimBoard(Geometry(1, 100, 200), seed=3)
    targets = np.random.default_rng(6).uniform(2.5, 25.0, 20_000).astype(np.float32)
    result = program_and_verify(board, np.arange(20_000, dtype=np.uint32), targets)
    programmed_at_s = float(result.programmed_s.max())
    board.clock.advance(programmed_at_s + T0_S - board.board_time_s())
    g_t0 = _mean_of_reads(board, result.addresses)
    board.clock.advance(programmed_at_s + age_s - board.board_time_s())
    reads = np.array([board.read_block(result.addresses) for _ in range(16)])
    relative = reads.std(axis=0, ddof=1) / reads.mean(axis=0)
    law = paper_read_noise_q(g_t0) * paper_read_time_factor(age_s)
    for in_bin in _bins(targets)[1:]:
        measured_rms = np.sqrt(np.mean(relative[in_bin] ** 2))
        law_rms = np.sqrt(np.mean(law[in_bin] ** 2))
        assert measured_rms == pytest.approx(law_rms, rel=0.15)


def test_stuck_and_dead_devices_are_reported_not_converged() -> None:
    model = PCMModel(stuck_rate=0.01, dead_rate=0.01)
    board = SimBoard(Geometry(1, 1, 20_000), model=model, seed=4)
    targets = np.random.default_rng(1).uniform(1.0, 9.0, 20_000).astype(np.float32)
    result = program_and_verify(board, np.arange(20_000, dtype=np.uint32), targets)
    defective = board.array.stuck | board.array.dead
    assert 0.015 < defective.mean() < 0.025
    assert np.all(result.status[defective] == DeviceStatus.STUCK)
    assert np.mean(result.status[~defective] == DeviceStatus.CONVERGED) >= 0.99
