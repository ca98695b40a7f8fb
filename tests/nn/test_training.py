from __future__ import annotations

import torch

from hwctl.nn.data import ImageSet, Normalizer
from hwctl.nn.inference import accuracy_pct
from hwctl.nn.models import Checkpoint, build_model
from hwctl.nn.training import analog_layers, clip_weights, weight_noise


def test_noise_is_injected_only_inside_the_forward_context_and_fresh_per_batch() -> None:
    model = build_model("digits-resnet")
    clean = [layer.weight.detach().clone() for layer in analog_layers(model)]
    gen = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(2):
        with weight_noise(model, 0.038, gen):
            seen.append(analog_layers(model)[0].weight.detach().clone())
        for layer, w0 in zip(analog_layers(model), clean, strict=True):
            assert torch.equal(layer.weight, w0)
    assert not torch.equal(seen[0], seen[1])
    assert not torch.equal(seen[0], clean[0])


def test_noise_std_is_eta_times_the_layers_largest_weight() -> None:
    lin = torch.nn.Linear(400, 400)
    w0 = lin.weight.detach().clone()
    with weight_noise(lin, 0.05, torch.Generator().manual_seed(1)):
        noise = lin.weight.detach() - w0
    expected = 0.05 * float(w0.abs().max())
    assert abs(float(noise.std()) / expected - 1) < 0.02


def test_gradient_of_the_noisy_forward_reaches_the_clean_weights() -> None:
    lin = torch.nn.Linear(4, 2)
    x = torch.randn(8, 4)
    with weight_noise(lin, 0.1, torch.Generator().manual_seed(2)):
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
