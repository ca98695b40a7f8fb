"""Networks uploaded as torch.export archives (`.pt2`), read without executing anything in them.

`torch.export.load` is not safe for uploads: it unpickles with `weights_only=False` a
weight marked `use_pickle` and, after a failed safe attempt, the archive's sample
inputs, so a crafted archive runs code (checked on torch 2.13, tests/nn/test_exported.py).
This reader never unpickles. It takes from the zip only plain data:

- `<archive>/models/model.json`: the graph and its signature (JSON), to find every
  conv and linear op and the parameter that is its weight;
- `<archive>/data/weights/model_weights_config.json` (JSON) and the raw little-endian
  tensor bytes it points to, viewed with the recorded sizes, strides and offset after
  checking they stay inside the bytes.

Pickled entries (sample inputs, constants, tensor subclasses) are never opened; a weight
stored pickled is refused. Every entry read is bounded by its declared size, checked
against `max_expanded_bytes` before anything is decompressed.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import numpy.typing as npt
import torch

from hwctl.mapping import LayerWeights
from hwctl.nn.conductance import unroll

ExportSource = bytes | str | Path | BinaryIO
LayerKind = Literal["conv", "linear"]

# 2 GiB of decompressed entries: ResNet-34 is 87 MB, a 35 M-device chip holds 70 MB of weights.
MAX_EXPANDED_BYTES = 2 << 30
MODEL_FILE = "models/model.json"
WEIGHTS_DIR = "data/weights/"
WEIGHTS_CONFIG = WEIGHTS_DIR + "model_weights_config.json"
# torch._export.serde.schema.ScalarType codes of the dtypes a weight may have.
SCALAR_TYPES: dict[int, np.dtype[Any]] = {
    6: np.dtype("<f2"),  # HALF
    7: np.dtype("<f4"),  # FLOAT
    8: np.dtype("<f8"),  # DOUBLE
}
CONV_OPS = frozenset({
    "torch.ops.aten.conv1d.default",
    "torch.ops.aten.conv2d.default",
    "torch.ops.aten.conv3d.default",
    "torch.ops.aten.convolution.default",
})  # fmt: skip
LINEAR_OPS = frozenset({"torch.ops.aten.linear.default"})


class ExportedProgramError(ValueError):
    """The upload is not a torch.export archive this reader accepts; the message says why."""


@dataclass(frozen=True)
class AnalogWeight:
    """The weight of one conv or linear op, by the parameter name the model gave it."""

    parameter: str  # e.g. "layer1.0.conv1.weight"
    kind: LayerKind
    groups: int
    values: npt.NDArray[np.float32]  # as the model holds it: (C_out, C_in/groups, k…) or (out, in)

    @property
    def layer(self) -> str:
        """The module name, as `hwctl.nn.conductance.analog_modules` names the same layer."""
        return self.parameter.removesuffix(".weight")


@dataclass(frozen=True)
class ExportedNetwork:
    """What the archive says about the network, without running it."""

    input_shapes: list[tuple[int | None, ...]]  # one per user input; None for a dynamic size
    analog_weights: list[AnalogWeight]  # in graph order, each parameter once

    @property
    def n_analog_weights(self) -> int:
        return sum(w.values.size for w in self.analog_weights)

    def layer_weights(self) -> list[LayerWeights]:
        """Each analog weight as its crossbar matrix, named after its layer (grouped convs refused)."""
        grouped = [w.parameter for w in self.analog_weights if w.groups != 1]
        if grouped:
            raise ExportedProgramError(f"grouped convolutions are not mapped yet: {', '.join(grouped)}")
        return [LayerWeights(w.layer, unroll(torch.from_numpy(w.values))) for w in self.analog_weights]


def read_exported_program(
    source: ExportSource, max_expanded_bytes: int = MAX_EXPANDED_BYTES
) -> ExportedNetwork:
    """The conv/linear weights and input shapes of a `torch.export.save` archive, read as data."""
    try:
        with zipfile.ZipFile(_stream(source)) as archive:
            reader = _Archive(archive, max_expanded_bytes)
            program = reader.json(MODEL_FILE)
            weights = reader.json(WEIGHTS_CONFIG).get("config", {})
            graph_module = program["graph_module"]
            placeholders = _parameter_names(graph_module["signature"]["input_specs"])
            found = list(_analog_ops(graph_module["graph"]["nodes"], placeholders))
            analog = [
                AnalogWeight(name, kind, groups, reader.tensor(name, weights)) for name, kind, groups in found
            ]
            shapes = _input_shapes(graph_module)
    except (zipfile.BadZipFile, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ExportedProgramError(f"not a torch.export archive this reader understands: {exc!r}") from None
    if not analog:
        raise ExportedProgramError("the graph has no conv or linear op: nothing to put on the chip")
    return ExportedNetwork(shapes, analog)


def _stream(source: ExportSource) -> BinaryIO:
    if isinstance(source, bytes):
        return io.BytesIO(source)
    if isinstance(source, str | Path):
        return Path(source).open("rb")
    return source


class _Archive:
    """The zip's entries under the archive's own folder, each read within the size budget."""

    def __init__(self, archive: zipfile.ZipFile, max_expanded_bytes: int) -> None:
        self.archive = archive
        self.budget = max_expanded_bytes
        roots = [n.removesuffix("archive_format") for n in archive.namelist() if n.endswith("archive_format")]
        if len(roots) != 1:
            raise ExportedProgramError("not a torch.export archive: no single <folder>/archive_format")
        self.root = roots[0]
        if self.read("archive_format") != b"pt2":
            raise ExportedProgramError("not a torch.export archive: its archive_format is not 'pt2'")
        if self.root + "byteorder" in archive.namelist() and self.read("byteorder") != b"little":
            raise ExportedProgramError("only little-endian archives are read")

    def read(self, name: str) -> bytes:
        info = self.archive.getinfo(self.root + name)
        if info.file_size > self.budget:
            raise ExportedProgramError(
                f"{name} expands to {info.file_size:,} bytes, "
                f"over the {self.budget:,} bytes left of the limit"
            )
        self.budget -= info.file_size
        return self.archive.read(info)  # zipfile stops at the declared size and checks the CRC

    def json(self, name: str) -> dict[str, Any]:
        value = json.loads(self.read(name))
        if not isinstance(value, dict):
            raise ExportedProgramError(f"{name} is not a JSON object")
        return value

    def tensor(self, name: str, config: dict[str, Any]) -> npt.NDArray[np.float32]:
        """The weight `name` from its raw bytes, as float32; pickled or out-of-bounds views refused."""
        if name not in config:
            raise ExportedProgramError(f"weight {name} is used by the graph but not stored")
        entry = config[name]
        if entry.get("use_pickle", True):
            raise ExportedProgramError(f"weight {name} is stored pickled; only raw tensors are read")
        meta = entry["tensor_meta"]
        dtype = SCALAR_TYPES.get(meta["dtype"])
        if dtype is None:
            raise ExportedProgramError(f"weight {name} has dtype code {meta['dtype']}; floats only")
        sizes = [_int(s) for s in meta["sizes"]]
        strides = [_int(s) for s in meta["strides"]]
        offset = _int(meta["storage_offset"])
        path = str(entry["path_name"])
        if "/" in path or path.startswith("."):
            raise ExportedProgramError(f"weight {name} points outside the weights folder: {path!r}")
        flat = np.frombuffer(self.read(WEIGHTS_DIR + path), dtype=dtype)
        # The view touches elements offset + Σ i_k·stride_k, 0 ≤ i_k < size_k: all must lie in `flat`.
        if len(sizes) != len(strides) or min([offset, *sizes, *strides]) < 0:
            raise ExportedProgramError(f"weight {name} has an invalid layout")
        last = offset + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True))
        if 0 not in sizes and last >= flat.size:
            raise ExportedProgramError(f"weight {name} reaches beyond its {flat.size} stored values")
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=sizes, strides=[s * dtype.itemsize for s in strides], writeable=False
        )
        values = np.array(view, dtype=np.float32)
        if not np.isfinite(values).all():
            raise ExportedProgramError(f"weight {name} holds NaN or infinite values")
        return values


def _int(value: dict[str, Any]) -> int:
    if "as_int" not in value:
        raise ExportedProgramError(f"a symbolic size or stride where a number was expected: {value}")
    return int(value["as_int"])


def _parameter_names(input_specs: list[dict[str, Any]]) -> dict[str, str]:
    """Graph placeholder name → parameter name (e.g. p_conv1_weight → conv1.weight)."""
    return {
        spec["parameter"]["arg"]["name"]: spec["parameter"]["parameter_name"]
        for spec in input_specs
        if "parameter" in spec
    }


def _analog_ops(
    nodes: list[dict[str, Any]], parameters: dict[str, str]
) -> Iterator[tuple[str, LayerKind, int]]:
    """(parameter, kind, groups) of every conv/linear op whose weight is a parameter, once each."""
    seen: set[str] = set()
    for node in nodes:
        target = node["target"]
        if target not in CONV_OPS and target not in LINEAR_OPS:
            continue
        args = {arg["name"]: arg["arg"] for arg in node["inputs"]}
        if args.get("transposed", {}).get("as_bool"):
            raise ExportedProgramError(f"{node['name']}: transposed convolutions are not supported")
        placeholder = args["weight"].get("as_tensor", {}).get("name")
        if placeholder not in parameters:
            raise ExportedProgramError(f"{node['name']}: its weight is computed, not a model parameter")
        name = parameters[placeholder]
        if name in seen:
            continue
        seen.add(name)
        groups = int(args.get("groups", {}).get("as_int", 1))
        yield name, ("conv" if target in CONV_OPS else "linear"), groups


def _input_shapes(graph_module: dict[str, Any]) -> list[tuple[int | None, ...]]:
    tensors = graph_module["graph"]["tensor_values"]
    names = [
        spec["user_input"]["arg"]["as_tensor"]["name"]
        for spec in graph_module["signature"]["input_specs"]
        if "user_input" in spec and "as_tensor" in spec["user_input"]["arg"]
    ]
    return [tuple(s.get("as_int") for s in tensors[name]["sizes"]) for name in names]
