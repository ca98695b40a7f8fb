"""The compute core: logits from a readout equal the digital model's when the conductances
hit their targets; periphery, compensation and input checks behave as specified."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from drivers.base import Geometry
from hwctl.inference import periphery
from hwctl.inference.inputs import InputError, Inputs, Normalisation, infer_layout
from hwctl.inference.results import Outcome
from hwctl.inference.run import (
    ChipNetwork,
    InferenceError,
    InferenceSettings,
    architecture_classes,
    architecture_has_batchnorm,
    check_methods,
    check_size,
    forward,
    has_batchnorm,
)
from hwctl.mapping import DeviceMap, map_network
from hwctl.nn.compensation import AnalogIO
from hwctl.nn.conductance import export_layers
from hwctl.nn.data import ImageSet, load_digits
from hwctl.nn.models import Checkpoint, build_model
from hwctl.vocabulary import CompensationMethod as M

CHIP = Geometry(4, 256, 256)


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    torch.manual_seed(1)
    model = build_model("digits-resnet").eval()
    return Checkpoint("digits-resnet", {k: v.clone() for k, v in model.state_dict().items()})


@pytest.fixture(scope="module")
def device_map(checkpoint: Checkpoint) -> DeviceMap:
    return map_network(export_layers(checkpoint.build()), CHIP)


@pytest.fixture(scope="module")
def digits() -> Inputs:
    test = load_digits("test")
    return Inputs.from_image_set(ImageSet(test.x[:120], test.y[:120]))


def test_exact_conductances_give_the_digital_models_logits(
    checkpoint: Checkpoint, device_map: DeviceMap, digits: Inputs
) -> None:
    network = ChipNetwork(checkpoint, device_map)
    [outcome] = network.infer(digits, device_map.target_g_us, InferenceSettings(top_k=3))
    digital = forward(checkpoint.build(), digits, Normalisation.of_architecture("digits-resnet"))
    np.testing.assert_allclose(outcome.logits, digital, atol=1e-4)
    assert digits.y is not None
    scores = outcome.scores(digits.y, k=3)
    assert scores.n_images == 120 and scores.confusion.sum() == 120
    assert np.trace(scores.confusion) == scores.n_correct
    assert scores.accuracy_pct == pytest.approx(100.0 * np.mean(digital.argmax(1) == digits.y))
    assert scores.top_k_accuracy_pct >= scores.accuracy_pct


def test_drifted_conductances_change_the_logits_and_gdc_restores_their_scale(
    checkpoint: Checkpoint, device_map: DeviceMap, digits: Inputs
) -> None:
    network = ChipNetwork(checkpoint, device_map)
    drifted = device_map.target_g_us * 0.5  # every device lost half its conductance
    settings = InferenceSettings(methods=(M.NONE, M.GDC))
    none, gdc = network.infer(digits, drifted, settings, g_t0_us=device_map.target_g_us)
    digital = forward(checkpoint.build(), digits, Normalisation.of_architecture("digits-resnet"))
    assert np.abs(none.logits - digital).max() > 1e-2
    np.testing.assert_allclose(gdc.logits, digital, atol=1e-3)  # a uniform drift is exactly undone


def test_top_k_lists_the_largest_logits_first() -> None:
    outcome = Outcome(M.NONE, 0, np.array([[0.1, 3.0, 2.0, -1.0]], np.float32))
    assert outcome.top_k(3).tolist() == [[1, 2, 0]]
    assert outcome.top_k(10).tolist() == [[1, 2, 0, 3]]  # k beyond the classes: all of them


def test_periphery_quantises_to_the_bit_grid_and_redraws_noise_per_seed(
    checkpoint: Checkpoint, digits: Inputs
) -> None:
    x = torch.randn(4, 3, 5, 5)
    q = periphery.quantized(x, 4)
    levels = q / q.abs().amax(dim=(1, 2, 3), keepdim=True) * 7
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # 2^(4−1) − 1 = 7 levels a side

    norm = Normalisation.of_architecture("digits-resnet")
    model = checkpoint.build()
    ideal = forward(model, digits, norm)

    def noisy(seed: int) -> np.ndarray:
        handles = periphery.attach(model, AnalogIO(8, 8, 0.05), seed=seed)
        try:
            return forward(model, digits, norm)
        finally:
            for h in handles:
                h.remove()

    first, again, other = noisy(0), noisy(0), noisy(1)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 0
    assert 0 < np.abs(first - ideal).mean() < 0.5 * np.abs(ideal).mean()
    assert periphery.attach(model, AnalogIO()) == []  # ideal: nothing hooked


def test_adabs_on_a_network_without_batch_norm_is_refused() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert not has_batchnorm(mlp) and architecture_has_batchnorm("digits-resnet")
    with pytest.raises(InferenceError, match="no batch norm"):
        check_methods([M.ADABS], batchnorm=has_batchnorm(mlp))
    check_methods([M.NONE, M.GDC], batchnorm=False)


def test_an_inference_whose_logits_would_not_fit_in_memory_is_refused() -> None:
    assert architecture_classes("digits-resnet") == 10
    check_size(100_000, 10, InferenceSettings(methods=(M.NONE, M.GDC), repeats=25))
    with pytest.raises(InferenceError, match="at most 50000000"):
        check_size(100_000, 10, InferenceSettings(methods=(M.NONE, M.GDC, M.ADABS), repeats=100))


def test_inputs_that_do_not_fit_are_refused_with_both_shapes(
    checkpoint: Checkpoint, device_map: DeviceMap
) -> None:
    network = ChipNetwork(checkpoint, device_map)
    cifar_like = Inputs(np.zeros((2, 3, 32, 32), np.uint8), "NCHW")
    with pytest.raises(InputError, match=r"1×8×8.*3×32×32"):
        network.infer(cifar_like, device_map.target_g_us, InferenceSettings())
    with pytest.raises(InferenceError, match="t0"):
        network.infer(Inputs(np.zeros((2, 1, 8, 8), np.uint8), "NCHW"), device_map.target_g_us,
                      InferenceSettings(methods=(M.GDC,)))  # fmt: skip


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.full((2, 1, 8, 8), np.nan, np.float32), "NaN or inf"),
        (np.zeros((2, 1, 8, 8), np.float64), "uint8 or float32"),
        (np.zeros((2, 8, 8), np.uint8), "4-D"),
        (np.zeros((0, 1, 8, 8), np.uint8), "no images"),
    ],
)
def test_bad_images_are_refused(x: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Inputs(x, "NCHW")


def test_layout_is_read_from_where_the_channels_are() -> None:
    assert infer_layout((5, 3, 32, 32)) == "NCHW"
    assert infer_layout((5, 32, 32, 3)) == "NHWC"
    with pytest.raises(InputError, match="give layout"):
        infer_layout((5, 3, 3, 3))
    nhwc = Inputs(np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3), "NHWC")
    nchw = Inputs(np.ascontiguousarray(nhwc.x.transpose(0, 3, 1, 2)), "NCHW")
    norm = Normalisation((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert torch.equal(nhwc.batch(0, 2, norm), nchw.batch(0, 2, norm))
    assert nhwc.image_shape == nchw.image_shape == (3, 4, 4)
