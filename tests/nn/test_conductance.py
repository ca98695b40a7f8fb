from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drivers.base import Geometry
from hwctl.mapping import map_network
from hwctl.nn.compensation import AnalogIO
from hwctl.nn.conductance import (
    ModelMismatchError,
    analog_modules,
    export_layers,
    first_and_last_layers,
    fold,
    load_conductances,
    unroll,
)  # fmt: skip
from hwctl.nn.models import analog_weight_count, build_model, seeded_checkpoint

CHIP_50M = Geometry(tiles=48, rows=512, cols=2048)  # 50.3 M devices


def test_unrolled_conv_matrix_times_input_patches_is_the_convolution() -> None:
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 6, 6)
    patches = F.unfold(x, 3, padding=1)  # (N, C·k·k, L), channel-major
    patches = patches.view(2, 3, 3, 3, -1).permute(0, 2, 3, 1, 4).reshape(2, 27, -1)  # → (k, k, C) rows
    y = torch.einsum("nrl,ro->nol", patches, torch.from_numpy(unroll(conv.weight)))
    torch.testing.assert_close(y.reshape(2, 5, 6, 6), conv(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(7, 4, 3, 3), (10, 64)])
def test_fold_is_the_exact_inverse_of_unroll(shape: tuple[int, ...]) -> None:
    w = torch.randn(shape)
    assert torch.equal(fold(unroll(w), w), w)


def test_ideal_conductances_rebuild_the_same_network() -> None:
    model = build_model("resnet20").eval()
    device_map = map_network(export_layers(model), Geometry(tiles=16, rows=512, cols=256))
    rebuilt = build_model("resnet20").eval()
    rebuilt.load_state_dict(model.state_dict())
    for m in analog_modules(rebuilt).values():
        m.weight.data.zero_()
    load_conductances(rebuilt, device_map, device_map.target_g_us)
    for (name, a), b in zip(analog_modules(model).items(), analog_modules(rebuilt).values(), strict=True):
        # W → s·W (float32 µS) → /s: exact up to float32 rounding of the scale.
        torch.testing.assert_close(b.weight, a.weight, rtol=1e-6, atol=1e-7, msg=name)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), model(x), rtol=1e-4, atol=1e-4)


def test_conductances_of_another_network_are_refused() -> None:
    device_map = map_network(export_layers(build_model("digits-resnet")), Geometry(4, 512, 256))
    with pytest.raises(ModelMismatchError, match="missing"):
        load_conductances(build_model("resnet20"), device_map, np.zeros(device_map.n_devices, np.float32))


def test_layers_kept_digital_keep_their_checkpoint_weights_through_the_rebuild() -> None:
    model = build_model("resnet20").eval()
    digital = first_and_last_layers(model)
    assert digital == ("conv1", "linear")
    chip = Geometry(tiles=16, rows=512, cols=256)
    device_map = map_network(export_layers(model), chip, digital_layers=digital)
    rebuilt = build_model("resnet20").eval()
    rebuilt.load_state_dict(model.state_dict())
    load_conductances(rebuilt, device_map, device_map.target_g_us * 0.5)  # every device drifted to half
    original = analog_modules(model)
    for name, module in analog_modules(rebuilt).items():
        expected = original[name].weight if name in digital else 0.5 * original[name].weight
        torch.testing.assert_close(module.weight, expected, rtol=1e-6, atol=1e-7, msg=name)


def test_analog_io_effects_apply_to_analog_layers_only() -> None:
    model = build_model("digits-resnet").eval()
    digital = first_and_last_layers(model)
    handles = AnalogIO.quantized(4).attach(model, digital_layers=digital)
    assert len(handles) == 2 * (len(analog_modules(model)) - len(digital))  # DAC and ADC hook each
    for handle in handles:
        handle.remove()


@pytest.mark.slow
def test_resnet34_maps_onto_43_6_million_devices_in_seconds_holding_one_address_and_target_each() -> None:
    """8 bytes a device in the map; building it peaks at most a quarter above that (traced)."""
    model = seeded_checkpoint("resnet34", seed=0).build()
    layers = export_layers(model)
    n_weights = analog_weight_count(model)
    tracemalloc.start()
    try:
        started = time.perf_counter()
        all_analog = map_network(layers, CHIP_50M)
        elapsed_s = time.perf_counter() - started
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all_analog.n_devices == 2 * n_weights == 43_559_296
    assert all_analog.addresses.nbytes + all_analog.target_g_us.nbytes == 8 * all_analog.n_devices
    assert peak_bytes < 1.25 * 8 * all_analog.n_devices
    assert elapsed_s < 20.0  # ~2 s on the 2-core CI machine
    del all_analog
    first, last = first_and_last_layers(model)
    edges_digital = map_network(layers, CHIP_50M, digital_layers=(first, last))
    kept = model.get_submodule(first).weight.numel() + model.get_submodule(last).weight.numel()
    assert kept == 64 * 3 * 7 * 7 + 1000 * 512
    assert edges_digital.n_devices == 2 * (n_weights - kept)
