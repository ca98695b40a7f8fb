"""aihwkit's Fusion-chip CSV layout: the header numbers layers as aihwkit does, values run in
each weight tensor's (out, C_in·k·k) order, and targets survive export → import exactly."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import numpy as np
import pytest
import torch

from drivers.base import Geometry
from hwctl.interop.aihwkit_fusion import (
    FusionLayoutError,
    fusion_layers,
    fusion_values,
    read_csv,
    targets_from_fusion,
    write_csv,
)
from hwctl.mapping import map_network
from hwctl.nn.conductance import analog_modules, export_layers
from hwctl.nn.models import build_model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(3)
    return build_model("digits-resnet").eval()


def test_header_numbers_every_module_from_the_model_itself_as_aihwkit_does(model: torch.nn.Module) -> None:
    layers = fusion_layers(model)
    numbered = {name: i for i, (name, _) in enumerate(model.named_modules(), start=1)}
    assert [layer.name for layer in layers] == list(analog_modules(model))
    first, last = layers[0], layers[-1]
    assert (first.name, first.id, first.cls, first.num_weights, first.height, first.width) == (
        "conv1", 2, "AnalogConv2d", 8 * 1 * 3 * 3, 8, 9)  # fmt: skip
    assert (last.name, last.cls, last.height, last.width) == ("linear", "AnalogLinear", 10, 32)
    assert all(layer.id == numbered[layer.name] for layer in layers)


def test_targets_round_trip_through_the_csv(model: torch.nn.Module) -> None:
    device_map = map_network(export_layers(model), Geometry(4, 256, 256))
    layers = fusion_layers(model)
    text = "".join(write_csv(layers, fusion_values(model, device_map, device_map.target_g_us)))

    rows = list(csv.reader(io.StringIO(text)))  # what aihwkit's reader sees
    assert rows[5] == [layer.name for layer in layers]
    assert [len(r) for r in rows[6:]] == [layer.num_weights for layer in layers]
    values = read_csv(text, layers)
    assert all((v >= 0).all() for v in values.values())  # targets: the carrying device's conductance
    np.testing.assert_allclose(targets_from_fusion(model, device_map, values), device_map.target_g_us,
                               rtol=1e-6, atol=1e-6)  # fmt: skip


def test_values_follow_the_weight_tensor_and_rebuild_the_weights(model: torch.nn.Module) -> None:
    device_map = map_network(export_layers(model), Geometry(4, 256, 256))
    rng = np.random.default_rng(0)
    g_us = (device_map.target_g_us + rng.normal(0, 0.3, device_map.n_devices)).astype(np.float32)
    values = fusion_values(model, device_map, g_us)
    read_back = device_map.weights_from_g(g_us)
    for layer in device_map.layers:
        weight = analog_modules(model)[layer.name].weight.detach()
        sign = torch.sign(weight).reshape(weight.shape[0], -1).numpy().ravel()
        sign[sign == 0] = 1
        rebuilt = values[layer.name] * sign / layer.scale_us_per_weight  # aihwkit: sign · g / scale
        ours = torch.from_numpy(read_back[layer.name])  # (k·k·C_in, C_out)
        if weight.ndim == 4:
            c_out, c_in, kh, kw = weight.shape
            ours = ours.reshape(kh, kw, c_in, c_out).permute(3, 2, 0, 1)
        else:
            ours = ours.t()
        np.testing.assert_allclose(rebuilt, ours.reshape(weight.shape[0], -1).numpy().ravel(), atol=1e-5)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: ["9" + lines[0], *lines[1:]], "header line 1"),
        (lambda lines: [*lines[:5], lines[5].replace("conv1", "stem"), *lines[6:]], "layer names"),
        (lambda lines: [*lines[:6], lines[6].rsplit(",", 1)[0], *lines[7:]], "values for"),
        (lambda lines: [*lines[:6], "nan," + lines[6].split(",", 1)[1], *lines[7:]], "NaN"),
        (lambda lines: [*lines[:6], "x," + lines[6].split(",", 1)[1], *lines[7:]], "not a number"),
        (lambda lines: lines[:7], "ends before"),
    ],
)
def test_a_csv_of_another_layout_is_refused(
    model: torch.nn.Module, edit: Callable[[list[str]], list[str]], message: str
) -> None:
    device_map = map_network(export_layers(model), Geometry(4, 256, 256))
    layers = fusion_layers(model)
    lines = "".join(write_csv(layers, fusion_values(model, device_map, device_map.target_g_us))).splitlines()
    with pytest.raises(FusionLayoutError, match=message):
        read_csv("\n".join(edit(lines)) + "\n", layers)
