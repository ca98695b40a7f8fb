from __future__ import annotations

import numpy as np
import pytest
import torch

from drivers.pcm_model import PCMModel
from hwctl.nn.data import ImageSet, Normalizer
from hwctl.nn.inference import accuracy_pct
from hwctl.nn.models import Checkpoint, build_model
from hwctl.nn.recipe import TrainRecipe
from hwctl.nn.training import analog_layers, clip_weights, weight_noise


def uniform(eta: float) -> TrainRecipe:
    return TrainRecipe("digits-resnet", eta=eta)


def chip_shaped(k: float) -> TrainRecipe:
    return TrainRecipe("digits-resnet", eta=None, pcm_noise=k)


def test_noise_is_injected_only_inside_the_forward_context_and_fresh_per_batch() -> None:
    model = build_model("digits-resnet")
    clean = [layer.weight.detach().clone() for layer in analog_layers(model)]
    gen = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(2):
        with weight_noise(model, uniform(0.038), gen):
            seen.append(analog_layers(model)[0].weight.detach().clone())
        for layer, w0 in zip(analog_layers(model), clean, strict=True):
            assert torch.equal(layer.weight, w0)
    assert not torch.equal(seen[0], seen[1])
    assert not torch.equal(seen[0], clean[0])


def test_noise_std_is_eta_times_the_layers_largest_weight() -> None:
    lin = torch.nn.Linear(400, 400)
    w0 = lin.weight.detach().clone()
    with weight_noise(lin, uniform(0.05), torch.Generator().manual_seed(1)):
        noise = lin.weight.detach() - w0
    expected = 0.05 * float(w0.abs().max())
    assert abs(float(noise.std()) / expected - 1) < 0.02


def test_chip_shaped_noise_follows_programming_and_read_error_at_t0_per_conductance() -> None:
    """Weights at 1/8, 1/2 and all of max|W|: the std, in units of max|W|, is k·σ(G)/G_max."""
    device = PCMModel()
    fractions = np.repeat([0.125, 0.5, 1.0], 20_000).astype(np.float32)
    lin = torch.nn.Linear(fractions.size, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(-0.3 * fractions)[None, :])  # sign and scale do not matter
    w0 = lin.weight.detach().clone()
    with weight_noise(lin, chip_shaped(1.5), torch.Generator().manual_seed(3)):
        noise = ((lin.weight.detach() - w0) / 0.3).numpy().reshape(3, -1)
    g_us = fractions.reshape(3, -1)[:, 0] * device.g_max_us
    t0_us = np.hypot(device.sigma_prog_us(g_us), device.read_sigma_us(g_us, g_us, device.t0_s))
    np.testing.assert_allclose(noise.std(axis=1), 1.5 * t0_us / device.g_max_us, rtol=0.03)
    assert noise.std(axis=1)[2] > 1.5 * noise.std(axis=1)[0]  # larger weights, larger error


def test_a_recipe_has_either_uniform_or_chip_shaped_noise() -> None:
    with pytest.raises(ValueError, match="not both"):
        TrainRecipe("digits-resnet", eta=0.038, pcm_noise=1.0)
    with pytest.raises(ValueError, match="not both"):
        TrainRecipe("digits-resnet", eta=None)


def test_gradient_of_the_noisy_forward_reaches_the_clean_weights() -> None:
    lin = torch.nn.Linear(4, 2)
    x = torch.randn(8, 4)
    with weight_noise(lin, uniform(0.1), torch.Generator().manual_seed(2)):
        lin(x).sum().backward()
    assert lin.weight.grad is not None
    torch.testing.assert_close(lin.weight.grad, x.sum(0).expand(2, 4).contiguous())  # d(sum Wx)/dW


def test_clipping_bounds_every_layer_to_alpha_standard_deviations() -> None:
    model = build_model("resnet20")
    clip_weights(model, 2.5)
    for layer in analog_layers(model):
        w = layer.weight.detach()
        # clipping shrinks std, so the bound holds against the pre-clip std (≥ post-clip std)
        assert float(w.abs().max()) <= 2.5 * float(w.std()) / 0.9


def test_digits_model_trains_with_noise_to_high_accuracy(
    digits_checkpoint: Checkpoint, digits_test: ImageSet
) -> None:
    accuracy = accuracy_pct(digits_checkpoint.build(), digits_test, Normalizer("digits-resnet"))
    assert accuracy >= 95.0
    assert digits_checkpoint.meta["recipe"]["eta"] == 0.038
    assert digits_checkpoint.meta["fp_test_accuracy"] == accuracy
