from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drivers.base import Geometry
from hwctl.mapping import map_network
from hwctl.nn.conductance import (
    ModelMismatchError,
    analog_modules,
    export_layers,
    fold,
    load_conductances,
    unroll,
)  # fmt: skip
from hwctl.nn.models import build_model


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
