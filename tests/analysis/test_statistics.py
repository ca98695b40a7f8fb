"""Bin statistics recover the model they were drawn from; outliers are found by index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from drivers.pcm_model import PCMModel
from hwctl.analysis.drift import fit_drift
from hwctl.analysis.statistics import chip_statistics
from hwctl.analysis.synthetic import synthetic_readouts
from tests.analysis.conftest import FittedChip


def test_every_bin_matches_the_model_within_15_percent(default_chip: FittedChip) -> None:
    stats = chip_statistics(default_chip.fit, default_chip.target_g_us, default_chip.readouts.t_s)
    assert len(stats.bins) == 10
    for b in stats.bins:
        assert b.n_used > 1500
        assert b.prog_sigma_us == pytest.approx(b.model_prog_sigma_us, rel=0.15)
        assert abs(b.prog_bias_us) < 0.1
        assert b.nu_mean == pytest.approx(b.model_nu_mean, rel=0.15)
        assert b.nu_sigma == pytest.approx(b.model_nu_sigma, rel=0.15)
        assert b.read_noise_rel == pytest.approx(b.model_read_noise_rel, rel=0.15)


def test_single_read_fits_widen_the_drift_spread_unless_corrected(default_chip: FittedChip) -> None:
    args = (default_chip.fit, default_chip.target_g_us, default_chip.readouts.t_s)
    raw = chip_statistics(*args, correct_fit_error=False)
    for b in raw.bins:  # ≥ 12 % wider in every bin (most where read noise is largest, low G)
        assert b.nu_sigma > 1.10 * b.model_nu_sigma


def test_misbehaving_devices_are_listed_by_index() -> None:
    model = PCMModel()
    target = np.random.default_rng(0).uniform(0.0, 25.0, 3000)
    target[:20] = 0.0  # RESET targets: reading 0 is normal for them
    readouts = synthetic_readouts(target, np.geomspace(25.0, 86_400.0, 12), model, seed=1)
    g_us = readouts.g_us.copy()
    stuck, dead, fast, lost = [100, 101], [200], [300, 301], [400]
    target[stuck] = 3.0
    g_us[:, stuck] = 20.0  # stuck high: constant and far from target
    g_us[:, dead] = 0.0
    target[dead] = 12.0
    g_us[:, fast] = (10.0 * (readouts.t_s[:, fast] / 25.0) ** -0.35).astype(np.float32)
    target[fast] = 10.0
    target[lost] = 20.0
    g_us[:, lost] = g_us[:, lost] / readouts.g_t0_us[lost] * 10.0  # drifts normally, 10 µS short
    converged = np.ones(target.size, bool)
    converged[lost] = False
    stats = chip_statistics(fit_drift(g_us, readouts.t_s), target, readouts.t_s, model, converged)
    assert stats.outliers.stuck == stuck
    assert stats.outliers.dead == dead
    assert stats.outliers.fast_drifters == fast
    assert stats.outliers.non_converged == lost
    assert stats.n_reset_targets == 20


def test_statistics_serialize_to_strict_json() -> None:
    target = np.array([0.0, 3.0, 3.1, 3.2])  # most bins empty: NaN must become null
    readouts = synthetic_readouts(target, np.geomspace(25.0, 1e4, 6), seed=2)
    stats = chip_statistics(fit_drift(readouts.g_us, readouts.t_s), target, readouts.t_s)
    data = json.loads(json.dumps(stats.to_dict(), allow_nan=False))
    assert data["bins"][1]["n_devices"] == 3
    assert data["bins"][5]["nu_mean"] is None


def test_statistics_survive_the_json_round_trip_a_stored_fit_makes(default_chip: FittedChip) -> None:
    """A stored fit keeps `to_dict()` as JSON; reports rebuild the statistics from it, NaN included."""
    stats = chip_statistics(default_chip.fit, default_chip.target_g_us, default_chip.readouts.t_s)
    stored = json.loads(json.dumps(stats.to_dict(), allow_nan=False))
    rebuilt = type(stats).from_dict(stored)
    assert rebuilt.to_dict() == stats.to_dict()
    assert rebuilt.outliers == stats.outliers and len(rebuilt.bins) == len(stats.bins)
    unresolved = type(stats).from_dict({**stored, "bins": [{**stored["bins"][0], "nu_sigma": None}]})
    assert np.isnan(unresolved.bins[0].nu_sigma)


def test_statistics_gathered_chunk_by_chunk_are_those_of_the_whole_chip(
    default_chip: FittedChip, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bin moments merge exactly across chunks, so a chip of any size is described the same way."""
    args = (default_chip.fit, default_chip.target_g_us, default_chip.readouts.t_s)
    whole = chip_statistics(*args)
    monkeypatch.setattr("hwctl.analysis.statistics._STATISTICS_CHUNK_DEVICES", 1_234)
    chunked = chip_statistics(*args)
    assert chunked.outliers == whole.outliers
    for got, want in zip(chunked.bins, whole.bins, strict=True):
        for name, value in vars(want).items():
            assert getattr(got, name) == pytest.approx(value, rel=1e-12, nan_ok=True), name
