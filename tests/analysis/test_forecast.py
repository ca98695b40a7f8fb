"""Forecast: accuracy at future times from per-device drift fits (Joshi et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from drivers.pcm_model import PCMModel
from drivers.sim.board import DEFAULT_GEOMETRY
from hwctl.analysis.drift import DriftFit, fit_drift
from hwctl.analysis.forecast import FORECAST_HORIZONS_S, forecast_accuracy, forecast_conductances_us
from hwctl.analysis.synthetic import synthetic_readouts
from hwctl.mapping import DeviceMap, map_network
from hwctl.nn.conductance import export_layers
from hwctl.nn.data import ImageSet, load_digits
from hwctl.nn.evaluation import ReadoutEvaluator, calibration_set
from hwctl.nn.models import Checkpoint, build_model
from hwctl.nn.training import TrainRecipe, train
from hwctl.schedule import log_spaced_offsets_s
from hwctl.vocabulary import CompensationMethod

CHIP_SEED = 5


@dataclass(frozen=True)
class TrainedDigits:
    evaluator: ReadoutEvaluator
    test: ImageSet
    device_map: DeviceMap


@pytest.fixture(scope="module")
def digits() -> TrainedDigits:
    """The digits ResNet trained for a few seconds (~95 % in floating point)."""
    torch.manual_seed(0)
    model = build_model("digits-resnet")
    recipe = TrainRecipe(arch="digits-resnet", data="digits", epochs=2, lr=0.05, batch_size=64, augment=False)
    train_set = load_digits("train")
    train(model, recipe, train_set, progress=False)
    checkpoint = Checkpoint("digits-resnet", model.state_dict())
    device_map = map_network(export_layers(model), DEFAULT_GEOMETRY)
    evaluator = ReadoutEvaluator(checkpoint, device_map, calibration_set(train_set, "digits"))
    return TrainedDigits(evaluator, load_digits("test"), device_map)


def test_forecast_reads_follow_the_fitted_line_with_the_models_read_noise() -> None:
    model = PCMModel()
    target = np.random.default_rng(1).uniform(3.0, model.g_max_us, 20_000)
    schedule = synthetic_readouts(target, log_spaced_offsets_s(points=8), model, seed=2, read_noise=False)
    fit = fit_drift(schedule.g_us, schedule.t_s)
    t_s = FORECAST_HORIZONS_S["1 month"]

    g = forecast_conductances_us(fit, t_s, model, seed=3)

    noise_free = schedule.g_t0_us * (t_s / model.t0_s) ** -schedule.nu
    rel_error = g / noise_free - 1.0
    expected_rel_sigma = model.read_noise_q_s(schedule.g_t0_us) * model.read_time_factor(np.array(t_s))
    assert abs(np.median(rel_error)) < 0.01
    assert np.std(rel_error) == pytest.approx(np.sqrt(np.mean(expected_rel_sigma**2)), rel=0.05)


def test_unfitted_devices_forecast_as_zero_and_seeds_reproduce() -> None:
    g = np.array([[0.0, 10.0], [0.0, 9.0], [0.0, 8.5]], np.float32)
    fit = fit_drift(g, [25.0, 250.0, 2500.0])
    first = forecast_conductances_us(fit, 1e6, seed=4)
    assert first[0] == 0.0 and first[1] > 0.0
    assert np.array_equal(first, forecast_conductances_us(fit, 1e6, seed=4))
    assert not np.array_equal(first, forecast_conductances_us(fit, 1e6, seed=5))


def _noise_free_fit(device_map: DeviceMap) -> DriftFit:
    """Fits of a chip read without noise over a day: exactly each device's G(t0) and ν."""
    schedule = synthetic_readouts(
        device_map.target_g_us, log_spaced_offsets_s(points=8), seed=CHIP_SEED, read_noise=False
    )
    return fit_drift(schedule.g_us, schedule.t_s)


def test_forecast_from_noise_free_fits_reproduces_directly_simulated_accuracy(digits: TrainedDigits) -> None:
    """Mean over 3 read-noise draws on each side; 3 points is ~2 standard errors of that mean."""
    target = digits.device_map.target_g_us
    fit = _noise_free_fit(digits.device_map)
    # Same seed: the same devices (G(t0), ν), now read with noise at t0 and at one month.
    reference = synthetic_readouts(target, [fit.t0_s], seed=CHIP_SEED).g_us[0]
    t_s = FORECAST_HORIZONS_S["1 month"]
    direct_reads = synthetic_readouts(target, [t_s] * 3, seed=CHIP_SEED).g_us

    forecasts = [
        forecast_accuracy(
            digits.evaluator, digits.test, fit, {"1 month": t_s}, g_reference_us=reference, seed=s
        )
        for s in range(3)
    ]

    for k, method in enumerate(CompensationMethod):
        forecast = np.mean([records[k].accuracy for records in forecasts])
        measured = np.mean([digits.evaluator.evaluate(digits.test, g, method, reference).accuracy
                            for g in direct_reads])  # fmt: skip
        assert forecast == pytest.approx(measured, abs=3.0), method


def test_forecast_records_are_labelled_and_see_drift_that_compensation_recovers(
    digits: TrainedDigits,
) -> None:
    """Without compensation a year of drift costs accuracy; GDC or AdaBS gets it back."""
    fit = _noise_free_fit(digits.device_map)
    horizons = {"t0": fit.t0_s, "1 year": FORECAST_HORIZONS_S["1 year"]}

    records = forecast_accuracy(digits.evaluator, digits.test, fit, horizons, seed=1)

    assert {r.kind for r in records} == {"forecast"}
    assert [(r.label, r.t_s, r.method) for r in records] == [
        (label, t_s, method) for label, t_s in horizons.items() for method in CompensationMethod
    ]
    assert all(r.ci_low is not None and r.ci_high is not None and r.ci_low <= r.accuracy <= r.ci_high
               for r in records)  # fmt: skip
    accuracy = {(r.label, r.method): r.accuracy for r in records}
    assert accuracy["1 year", "none"] < accuracy["t0", "none"] - 5.0
    assert max(accuracy["1 year", "gdc"], accuracy["1 year", "adabs"]) > accuracy["1 year", "none"] + 5.0
