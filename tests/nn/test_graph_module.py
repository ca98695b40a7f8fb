"""An uploaded graph runs as the network it was exported from, and only with known operations."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from drivers.base import Geometry
from hwctl.mapping import map_network
from hwctl.nn.compensation import GdcGains, adapt_batchnorm
from hwctl.nn.conductance import analog_modules, export_layers, load_conductances, load_matrices
from hwctl.nn.exported import ExportedProgramError, read_exported_program
from hwctl.nn.graph_module import ExportedModule
from hwctl.nn.models import build_model
from hwctl.vocabulary import GdcStatistic

CHIP = Geometry(tiles=16, rows=512, cols=512)


def _archive(model: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model, (example,)), buffer)
    return buffer.getvalue()


def _uploaded(model: nn.Module, example: torch.Tensor) -> ExportedModule:
    return ExportedModule(read_exported_program(_archive(model.eval(), example))).eval()


NETWORKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet20": (lambda: build_model("resnet20"), (3, 32, 32)),
    "mlp": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Linear(32, 10)), (1, 8, 8)),
    "cnn without batch norm, grouped conv": (
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3,
                              groups=2), nn.Tanh(), nn.Flatten(), nn.Linear(16 * 6 * 6, 5)),
        (3, 16, 16),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_an_exported_network_computes_what_the_original_does_under_the_same_names(name: str) -> None:
    build, shape = NETWORKS[name]
    torch.manual_seed(1)
    original = build().eval()
    uploaded = _uploaded(original, torch.zeros(1, *shape))
    assert uploaded.state_dict().keys() == original.state_dict().keys()
    assert list(analog_modules(uploaded)) == list(analog_modules(original))
    x = torch.randn(5, *shape)
    with torch.no_grad():
        torch.testing.assert_close(uploaded(x), original(x), rtol=0, atol=0)


def test_rebuild_from_conductances_gdc_and_adabs_work_on_the_uploaded_network_as_on_the_original() -> None:
    torch.manual_seed(2)
    original = build_model("resnet20").eval()
    uploaded = _uploaded(original, torch.zeros(1, 3, 32, 32))
    device_map = map_network(export_layers(uploaded), CHIP)
    native_map = map_network(export_layers(original), CHIP)
    np.testing.assert_array_equal(device_map.target_g_us, native_map.target_g_us)
    drifted = device_map.target_g_us * np.random.default_rng(0).uniform(0.7, 0.9, device_map.n_devices)
    gdc = GdcGains(GdcStatistic.BOTH_BITLINES, device_map)
    t0, now = device_map.target_g_us, drifted
    gains = gdc.gains(gdc.layer_statistics(t0, device_map.weights_from_g(t0)),
                      gdc.layer_statistics(now, device_map.weights_from_g(now)))  # fmt: skip
    calibration, x = torch.randn(64, 3, 32, 32), torch.randn(8, 3, 32, 32)
    outputs = []
    for model in (original, uploaded):
        load_conductances(model, device_map, drifted, gains)
        adapt_batchnorm(model, calibration)
        with torch.no_grad():
            outputs.append(model(x))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)


def _with_node_target(archive: bytes, old: str, new: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("models/model.json"):
                program = json.loads(data)
                node = next(n for n in program["graph_module"]["graph"]["nodes"] if n["target"] == old)
                node["target"] = new
                data = json.dumps(program).encode()
            target.writestr(info.filename, data)
    return out.getvalue()


def test_an_operation_outside_the_list_is_refused_by_name_before_anything_runs() -> None:
    """`torch.os.system` resolves to os.system by torch's own deserializer; here it is only a name."""
    archive = _archive(build_model("digits-resnet").eval(), torch.zeros(1, 1, 8, 8))
    crafted = _with_node_target(archive, "torch.ops.aten.relu.default", "torch.os.system")
    with pytest.raises(ExportedProgramError, match=r"operation torch\.os\.system is not supported"):
        ExportedModule(read_exported_program(crafted))


def test_a_network_exported_in_training_mode_is_refused_with_what_to_do() -> None:
    archive = _archive(build_model("digits-resnet").train(), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ExportedProgramError, match=r"training mode: export the model in eval\(\) mode"):
        read_exported_program(archive)


def test_the_uploaded_weights_load_like_any_model_s() -> None:
    """The state dict has the uploaded names, so crossbar matrices load back by name."""
    uploaded = _uploaded(build_model("digits-resnet"), torch.zeros(1, 1, 8, 8))
    layers = export_layers(uploaded)
    load_matrices(uploaded, {layer.name: np.zeros_like(layer.matrix) for layer in layers})
    assert all(not m.weight.detach().any() for m in analog_modules(uploaded).values())
