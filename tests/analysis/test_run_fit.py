"""A run's drift fit, walked range by range, is the whole-chip fit in bounded memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from drivers.pcm_model import PCMModel
from hwctl.analysis.drift import fit_drift
from hwctl.analysis.run_fit import MIN_READOUTS_TO_FIT, ReadoutRange, fit_ranges, fit_run, fit_stored_run
from hwctl.analysis.statistics import chip_statistics
from hwctl.analysis.stored import load_experiment
from hwctl.analysis.synthetic import synthetic_readouts
from hwctl.schedule import log_spaced_offsets_s
from hwctl.store.engine import make_engine
from hwctl.store.migrate import upgrade
from hwctl.store.run_parts import latest_run
from tests.analysis.conftest import FittedChip
from tests.api.results_data import write_campaign


def _ranges(chip: FittedChip, range_devices: int) -> Iterator[ReadoutRange]:
    n = chip.target_g_us.size
    for start in range(0, n, range_devices):
        devices = slice(start, min(start + range_devices, n))
        yield ReadoutRange(start, chip.readouts.g_us[:, devices], chip.readouts.t_s[:, devices])


def test_fitting_range_by_range_gives_the_whole_chip_fit_and_statistics(default_chip: FittedChip) -> None:
    n_readouts = default_chip.readouts.g_us.shape[0]
    converged = np.ones(default_chip.target_g_us.size, bool)
    ranged = fit_ranges(_ranges(default_chip, 3_000), default_chip.target_g_us, n_readouts, converged)
    whole = fit_drift(default_chip.readouts.g_us, default_chip.readouts.t_s, min_points=MIN_READOUTS_TO_FIT)
    np.testing.assert_array_equal(ranged.lines.status, whole.status)
    np.testing.assert_allclose(ranged.lines.nu, whole.nu, rtol=1e-6)  # kept as float32
    np.testing.assert_allclose(ranged.lines.g_t0_us, whole.g_t0_us, rtol=1e-6)
    ages_s = default_chip.readouts.t_s
    expected = chip_statistics(whole, default_chip.target_g_us, ages_s, converged=converged)
    assert ranged.statistics.outliers == expected.outliers
    for got, want in zip(ranged.statistics.bins, expected.bins, strict=True):
        assert got.n_used == want.n_used
        assert got.nu_mean == pytest.approx(want.nu_mean, rel=1e-5)
        assert got.read_noise_rel == pytest.approx(want.read_noise_rel, rel=1e-5)
        assert got.model_read_noise_rel == pytest.approx(want.model_read_noise_rel, rel=1e-5)


def test_ranges_must_follow_each_other_and_cover_every_device(default_chip: FittedChip) -> None:
    n_readouts = default_chip.readouts.g_us.shape[0]
    converged = np.ones(default_chip.target_g_us.size, bool)
    skipping = (r for r in _ranges(default_chip, 5_000) if r.first_device != 5_000)
    with pytest.raises(ValueError, match=r"range at device 10000 .* does not follow device 5000"):
        fit_ranges(skipping, default_chip.target_g_us, n_readouts, converged)
    short = (r for r in _ranges(default_chip, 5_000) if r.first_device < 15_000)
    with pytest.raises(ValueError, match="the ranges cover 15000 devices of 20000"):
        fit_ranges(short, default_chip.target_g_us, n_readouts, converged)


def test_memory_is_one_range_of_the_readouts_plus_a_few_dozen_bytes_a_device() -> None:
    """1 M devices read 20 times: 240 MB of readouts and ages, never held at once; what stays
    is the per-device results (17 B: the stored lines and ν's standard error) and one chunk of
    the statistics' temporaries."""
    n_devices, range_devices = 1_000_000, 20_000
    offsets_s = log_spaced_offsets_s(points=20)
    target = np.random.default_rng(0).uniform(0.0, PCMModel().g_max_us, n_devices)

    def ranges() -> Iterator[ReadoutRange]:
        for start in range(0, n_devices, range_devices):
            drawn = synthetic_readouts(target[start : start + range_devices], offsets_s, seed=start)
            yield ReadoutRange(start, drawn.g_us, drawn.t_s)

    held_readouts_bytes = n_devices * len(offsets_s) * (4 + 8)
    tracemalloc.start()
    try:
        fitted = fit_ranges(ranges(), target, len(offsets_s), np.ones(n_devices, bool))
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fitted.lines.ok.mean() > 0.99
    assert peak_bytes < 0.3 * held_readouts_bytes


def test_the_analyze_jobs_lean_read_of_a_stored_run_fits_as_the_whole_experiment(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'run.sqlite'}")
    upgrade(engine)
    try:
        campaign = write_campaign(engine)
        with engine.connect() as conn:
            whole = fit_run(conn, load_experiment(conn, campaign.experiment_id), range_devices=17)
            run = latest_run(conn, campaign.experiment_id)
            assert run is not None
            lean = fit_stored_run(conn, run, range_devices=17)
    finally:
        engine.dispose()
    np.testing.assert_array_equal(lean.lines.nu, whole.lines.nu)
    np.testing.assert_array_equal(lean.lines.status, whole.lines.status)
    assert lean.statistics == whole.statistics and lean.n_readouts == whole.n_readouts == 3
