"""torch.export archives are read as data: weights by parameter name, and nothing in them runs."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hwctl.nn.conductance import analog_modules, export_layers
from hwctl.nn.exported import ExportedProgramError, read_exported_program
from hwctl.nn.models import build_model
from tests.api.archives import edit_weights_config, rewritten


def _archive(model: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model.eval(), (example,)), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digits_archive() -> tuple[nn.Module, bytes]:
    model = build_model("digits-resnet")
    return model, _archive(model, torch.zeros(2, 1, 8, 8))


class _WritesAFile:
    """Unpickling this runs code: it writes `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.path)!r}, 'w').write('executed')",)


def _payload(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(_WritesAFile(marker), buffer)
    return buffer.getvalue()


def test_every_conv_and_linear_weight_is_found_by_parameter_name_with_its_values(
    digits_archive: tuple[nn.Module, bytes],
) -> None:
    model, archive = digits_archive
    network = read_exported_program(archive)
    assert network.input_shapes == [(2, 1, 8, 8)]
    modules = analog_modules(model)
    assert [w.layer for w in network.analog_weights] == list(modules)
    for weight in network.analog_weights:
        assert weight.kind == ("conv" if isinstance(modules[weight.layer], nn.Conv2d) else "linear")
        assert weight.groups == 1
        np.testing.assert_array_equal(weight.values, modules[weight.layer].weight.detach().numpy())
    assert network.n_analog_weights == sum(m.weight.numel() for m in modules.values())
    for ours, native in zip(network.layer_weights(), export_layers(model), strict=True):
        assert ours.name == native.name
        np.testing.assert_array_equal(ours.matrix, native.matrix)  # the same crossbar matrices


def test_a_crafted_archive_executes_nothing(digits_archive: tuple[nn.Module, bytes], tmp_path: Path) -> None:
    """Pickles in the sample inputs and in a weight marked `use_pickle` would write a file when
    unpickled (as `torch.export.load` does); the reader ignores the one and refuses the other."""
    _, archive = digits_archive
    marker = tmp_path / "executed"
    payload = _payload(marker)
    torch.load(io.BytesIO(payload), weights_only=False)  # the payload is live: unpickled, it runs
    assert marker.read_text() == "executed"
    marker.unlink()

    evil_inputs = rewritten(
        archive, lambda name, data: payload if name.endswith("data/sample_inputs/model.pt") else data
    )
    assert read_exported_program(evil_inputs).n_analog_weights > 0
    assert not marker.exists()

    def pickle_first_weight(config: dict[str, Any]) -> None:
        config["conv1.weight"]["use_pickle"] = True

    evil_weight = rewritten(
        edit_weights_config(archive, pickle_first_weight),
        lambda name, data: payload if name.endswith("data/weights/weight_0") else data,
    )
    with pytest.raises(ExportedProgramError, match=r"tensor conv1\.weight is stored pickled"):
        read_exported_program(evil_weight)
    assert not marker.exists()


def test_a_weight_whose_strides_reach_outside_its_bytes_is_refused(
    digits_archive: tuple[nn.Module, bytes],
) -> None:
    def stretch(config: dict[str, Any]) -> None:
        config["conv1.weight"]["tensor_meta"]["strides"][0] = {"as_int": 1_000_000}

    with pytest.raises(ExportedProgramError, match=r"conv1\.weight reaches beyond its 72 stored values"):
        read_exported_program(edit_weights_config(digits_archive[1], stretch))


def test_a_weight_whose_zero_strides_repeat_it_past_the_limit_is_refused_before_copying(
    digits_archive: tuple[nn.Module, bytes],
) -> None:
    """72 stored values viewed with stride 0 as 10^12: within the stored bytes, yet copying
    the view would allocate 4 TB (a MemoryError; a few GB would just be taken)."""

    def repeat(config: dict[str, Any]) -> None:
        meta = config["conv1.weight"]["tensor_meta"]
        meta["sizes"] = [{"as_int": 10**6}, {"as_int": 10**6}]
        meta["strides"] = [{"as_int": 0}, {"as_int": 0}]

    with pytest.raises(
        ExportedProgramError, match=r"conv1\.weight copies to .* over the .* bytes left of the limit"
    ):
        read_exported_program(edit_weights_config(digits_archive[1], repeat))


def test_entries_expanding_beyond_the_limit_are_refused_before_decompression(
    digits_archive: tuple[nn.Module, bytes],
) -> None:
    with pytest.raises(ExportedProgramError, match=r"expands to .* over the .* bytes left of the limit"):
        read_exported_program(digits_archive[1], max_expanded_bytes=10_000)


@pytest.mark.parametrize(
    ("upload", "refusal"),
    [
        (b"not a zip at all", "not a torch.export archive"),
        (lambda a: rewritten(a, lambda n, d: None if n.endswith("archive_format") else d), "archive_format"),
        (lambda a: rewritten(a, lambda n, d: b"{" if n.endswith("models/model.json") else d), "understands"),
    ],
    ids=["not a zip", "no archive format", "broken graph"],
)
def test_what_is_not_a_torch_export_archive_is_named_as_such(
    digits_archive: tuple[nn.Module, bytes], upload: bytes | Callable[[bytes], bytes], refusal: str
) -> None:
    data = upload if isinstance(upload, bytes) else upload(digits_archive[1])
    with pytest.raises(ExportedProgramError, match=refusal):
        read_exported_program(data)


def test_grouped_convolutions_are_found_and_refused_for_mapping_with_their_names() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    network = read_exported_program(_archive(model, torch.zeros(1, 4, 6, 6)))
    assert [(w.parameter, w.kind, w.groups) for w in network.analog_weights] == [
        ("0.weight", "conv", 2), ("2.weight", "linear", 1)
    ]  # fmt: skip
    with pytest.raises(ExportedProgramError, match=r"grouped convolutions are not mapped yet: 0\.weight"):
        network.layer_weights()
