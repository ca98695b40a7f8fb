"""Networks uploaded as torch.export archives (`.pt2`), read without executing anything in them.

`torch.export.load` is not safe for uploads: it unpickles with `weights_only=False` a
weight marked `use_pickle` and, after a failed safe attempt, the archive's sample
inputs, so a crafted archive runs code (checked on torch 2.13, tests/nn/test_exported.py);
its graph deserializer also resolves any `torch.…` attribute path as an operator. This
reader never unpickles and resolves nothing. It takes from the zip only plain data:

- `<archive>/models/model.json`: the graph and its signature (JSON): each node's
  operator *name* and decoded arguments, and which graph inputs are parameters, buffers
  and constants (by name);
- `<archive>/data/weights/model_weights_config.json` and `.../constants/...config.json`
  (JSON) and the raw little-endian tensor bytes they point to, viewed with the recorded
  sizes, strides and offset after checking they stay inside the bytes.

Pickled entries (sample inputs, tensor subclasses) are never opened; a tensor the graph
needs that is stored pickled is refused. Every entry read is bounded by its declared
size, checked against `max_expanded_bytes` before anything is decompressed. Running the
graph is `hwctl.nn.graph_module`'s job, with its own list of allowed operations.
"""

from __future__ import annotations

import io
import json
import math
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
PAYLOADS = {"weights": "data/weights/", "constants": "data/constants/"}
# torch._export.serde.schema.ScalarType codes of the dtypes a tensor may have.
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
POSITIONAL = 1  # torch._export.serde.schema.ArgumentKind


class ExportedProgramError(ValueError):
    """The upload is not a torch.export archive this reader accepts; the message says why."""


class ExportedTooLargeError(ExportedProgramError):
    """Reading the archive would take more memory than its expansion limit allows."""


@dataclass(frozen=True)
class TensorRef:
    """An argument that is another value of the graph, by its name there: a tensor, or a
    size computed while running (a dynamic batch dimension)."""

    name: str


@dataclass(frozen=True)
class GraphNode:
    """One operation: its operator's name, decoded arguments, and the names of its results."""

    name: str
    target: str  # e.g. "torch.ops.aten.conv2d.default"; only ever compared, never resolved
    args: tuple[tuple[str, bool, Any], ...]  # (schema name, positional?, value with TensorRef leaves)
    outputs: tuple[str | None, ...]

    def arg(self, name: str, default: Any = None) -> Any:
        return next((value for key, _, value in self.args if key == name), default)


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
    """What the archive says about the network, as data: the graph and the tensors it uses."""

    inputs: tuple[str, ...]  # graph names of the user inputs, in call order
    input_shapes: list[tuple[int | None, ...]]  # one per user input; None for a dynamic size
    ranks: dict[str, int]  # number of dimensions of every graph value
    nodes: tuple[GraphNode, ...]
    outputs: tuple[str, ...]
    parameters: dict[str, str]  # graph input name → parameter name, e.g. p_conv1_weight → conv1.weight
    buffers: dict[str, str]  # graph input name → buffer name
    constants: dict[str, str]  # graph input name → lifted tensor constant name
    tensors: dict[str, npt.NDArray[np.float32]]  # by parameter/buffer/constant name

    @property
    def analog_weights(self) -> list[AnalogWeight]:
        """The weight of every conv and linear op, in graph order, each parameter once."""
        return list(_analog_weights(self))

    @property
    def n_analog_weights(self) -> int:
        return sum(w.values.size for w in self.analog_weights)

    def layer_weights(self) -> list[LayerWeights]:
        """Each analog weight as its crossbar matrix, named after its layer (grouped convs refused)."""
        weights = self.analog_weights
        grouped = [w.parameter for w in weights if w.groups != 1]
        if grouped:
            raise ExportedProgramError(f"grouped convolutions are not mapped yet: {', '.join(grouped)}")
        return [LayerWeights(w.layer, unroll(torch.from_numpy(w.values))) for w in weights]


def is_exported_archive(data: bytes) -> bool:
    """Whether `data` is a torch.export archive (a `.pt2`) rather than a `torch.save` checkpoint,
    told from the ZIP's member names alone (nothing is decompressed or loaded)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return any(name.endswith("/archive_format") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def read_exported_program(
    source: ExportSource, max_expanded_bytes: int = MAX_EXPANDED_BYTES
) -> ExportedNetwork:
    """The graph, its tensors and input shapes of a `torch.export.save` archive, read as data."""
    try:
        with zipfile.ZipFile(_stream(source)) as archive:
            network = _read(_Archive(archive, max_expanded_bytes))
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, ExportedProgramError):
            raise
        raise ExportedProgramError(f"not a torch.export archive this reader understands: {exc!r}") from None
    if not network.analog_weights:
        raise ExportedProgramError("the graph has no conv or linear op: nothing to put on the chip")
    return network


def _read(reader: _Archive) -> ExportedNetwork:
    graph_module = reader.json(MODEL_FILE)["graph_module"]
    graph, signature = graph_module["graph"], graph_module["signature"]
    inputs: list[str] = []
    names: dict[str, dict[str, str]] = {"parameter": {}, "buffer": {}, "tensor_constant": {}}
    for spec in signature["input_specs"]:
        (kind, value), = spec.items()
        if kind == "user_input":
            inputs.append(value["arg"]["as_tensor"]["name"])
        elif kind in names:
            names[kind][value["arg"]["name"]] = value[f"{kind}_name"]
        else:
            raise ExportedProgramError(f"graph inputs of kind {kind!r} are not supported")
    for spec in signature["output_specs"]:
        (kind, _), = spec.items()
        if kind != "user_output":
            raise ExportedProgramError(f"the graph has a {kind} output: export the model in eval() mode")
    values = graph["tensor_values"]
    nodes = tuple(_node(raw) for raw in graph["nodes"])
    for node in nodes:
        if node.arg("training") is True or node.arg("train") is True:
            raise ExportedProgramError(f"{node.name} runs in training mode: export the model in eval() mode")
    used = {ref.name for node in nodes for ref in tensor_refs(node)}
    configs = {kind: reader.json(folder + f"model_{kind}_config.json").get("config", {})
               for kind, folder in PAYLOADS.items()}  # fmt: skip
    stored_in = (
        ("weights", names["parameter"]),
        ("weights", names["buffer"]),
        ("constants", names["tensor_constant"]),
    )
    tensors = {
        name: reader.tensor(name, configs[kind], PAYLOADS[kind])
        for kind, table in stored_in
        for placeholder, name in table.items()
        if placeholder in used
    }
    return ExportedNetwork(
        inputs=tuple(inputs),
        input_shapes=[tuple(s.get("as_int") for s in values[name]["sizes"]) for name in inputs],
        ranks={name: len(meta["sizes"]) for name, meta in values.items()},
        nodes=nodes,
        outputs=tuple(_decode(out).name for out in graph["outputs"]),
        parameters=names["parameter"],
        buffers=names["buffer"],
        constants=names["tensor_constant"],
        tensors=tensors,
    )


def _node(raw: dict[str, Any]) -> GraphNode:
    args = tuple(
        (arg["name"], arg.get("kind", POSITIONAL) == POSITIONAL, _decode(arg["arg"])) for arg in raw["inputs"]
    )
    results = [_decode(out) for out in raw["outputs"]]
    flat = [item for value in results for item in (value if isinstance(value, list) else [value])]
    outputs = tuple(None if item is None else item.name for item in flat)
    return GraphNode(raw["name"], str(raw["target"]), args, outputs)


def _decode(arg: dict[str, Any]) -> Any:
    """One serialized argument as a Python value; graph values become `TensorRef`s."""
    if len(arg) != 1:
        raise ExportedProgramError(f"an argument with {len(arg)} kinds: {sorted(arg)}")
    (kind, value), = arg.items()
    if kind == "as_tensor":
        return TensorRef(value["name"])
    if kind == "as_tensors":
        return [TensorRef(v["name"]) for v in value]
    if kind == "as_optional_tensors":
        return [None if "as_none" in v else TensorRef(v["as_tensor"]["name"]) for v in value]
    if kind == "as_none":
        return None
    if kind == "as_sym_int":
        return _sym_int(value)
    if kind == "as_sym_ints":
        return [_sym_int(v) for v in value]
    plain = {"as_int": int, "as_float": float, "as_bool": bool, "as_string": str}
    if kind in plain and isinstance(value, plain[kind]):
        return value
    lists = {"as_ints": int, "as_floats": float, "as_bools": bool}
    if kind in lists and isinstance(value, list) and all(isinstance(v, lists[kind]) for v in value):
        return list(value)
    raise ExportedProgramError(f"arguments of kind {kind!r} are not supported")


def _sym_int(value: dict[str, Any]) -> TensorRef | int:
    """A size: a named value of the graph, or a number. Its symbolic expression is not read."""
    if "as_name" in value:
        return TensorRef(str(value["as_name"]))
    if isinstance(value.get("as_int"), int):
        return int(value["as_int"])
    raise ExportedProgramError(f"a size of kind {sorted(value)} is not supported")


def tensor_refs(node: GraphNode) -> Iterator[TensorRef]:
    """The graph values a node takes as arguments."""
    for _, _, value in node.args:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, TensorRef):
                yield item


def _analog_weights(network: ExportedNetwork) -> Iterator[AnalogWeight]:
    seen: set[str] = set()
    for node in network.nodes:
        if node.target not in CONV_OPS and node.target not in LINEAR_OPS:
            continue
        if node.arg("transposed"):
            raise ExportedProgramError(f"{node.name}: transposed convolutions are not supported")
        weight = node.arg("weight")
        if not isinstance(weight, TensorRef) or weight.name not in network.parameters:
            raise ExportedProgramError(f"{node.name}: its weight is computed, not a model parameter")
        name = network.parameters[weight.name]
        if name not in seen:
            seen.add(name)
            kind: LayerKind = "conv" if node.target in CONV_OPS else "linear"
            yield AnalogWeight(name, kind, int(node.arg("groups", 1)), network.tensors[name])


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
        self.names = set(archive.namelist())
        roots = [n.removesuffix("archive_format") for n in self.names if n.endswith("archive_format")]
        if len(roots) != 1:
            raise ExportedProgramError("not a torch.export archive: no single <folder>/archive_format")
        self.root = roots[0]
        if self.read("archive_format") != b"pt2":
            raise ExportedProgramError("not a torch.export archive: its archive_format is not 'pt2'")
        if self.root + "byteorder" in self.names and self.read("byteorder") != b"little":
            raise ExportedProgramError("only little-endian archives are read")

    def read(self, name: str) -> bytes:
        info = self.archive.getinfo(self.root + name)
        if info.file_size > self.budget:
            raise ExportedTooLargeError(
                f"{name} expands to {info.file_size:,} bytes, "
                f"over the {self.budget:,} bytes left of the limit"
            )
        self.budget -= info.file_size
        return self.archive.read(info)  # zipfile stops at the declared size and checks the CRC

    def json(self, name: str) -> dict[str, Any]:
        if self.root + name not in self.names and "constants" in name:
            return {}  # archives without lifted constants may leave the file out
        value = json.loads(self.read(name))
        if not isinstance(value, dict):
            raise ExportedProgramError(f"{name} is not a JSON object")
        return value

    def tensor(self, name: str, config: dict[str, Any], folder: str) -> npt.NDArray[np.float32]:
        """The tensor `name` from its raw bytes, as float32; pickled or out-of-bounds views refused."""
        if name not in config:
            raise ExportedProgramError(f"tensor {name} is used by the graph but not stored")
        entry = config[name]
        if entry.get("use_pickle", True):
            raise ExportedProgramError(f"tensor {name} is stored pickled; only raw tensors are read")
        meta = entry["tensor_meta"]
        dtype = SCALAR_TYPES.get(meta["dtype"])
        if dtype is None:
            raise ExportedProgramError(f"tensor {name} has dtype code {meta['dtype']}; floats only")
        sizes = [_int(s) for s in meta["sizes"]]
        strides = [_int(s) for s in meta["strides"]]
        offset = _int(meta["storage_offset"])
        path = str(entry["path_name"])
        if "/" in path or path.startswith("."):
            raise ExportedProgramError(f"tensor {name} points outside its folder: {path!r}")
        flat = np.frombuffer(self.read(folder + path), dtype=dtype)
        # The view touches elements offset + Σ i_k·stride_k, 0 ≤ i_k < size_k: all must lie in `flat`.
        if len(sizes) != len(strides) or min([offset, *sizes, *strides]) < 0:
            raise ExportedProgramError(f"tensor {name} has an invalid layout")
        last = offset + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True))
        if 0 not in sizes and last >= flat.size:
            raise ExportedProgramError(f"tensor {name} reaches beyond its {flat.size} stored values")
        # Zero strides view few stored bytes as many: what the float32 copy takes beyond the
        # stored bytes counts against the budget too.
        extra = math.prod(sizes) * 4 - flat.nbytes
        if extra > self.budget:
            raise ExportedTooLargeError(
                f"tensor {name} copies to {extra + flat.nbytes:,} bytes from {flat.nbytes:,} stored, "
                f"over the {self.budget:,} bytes left of the limit"
            )
        self.budget -= max(extra, 0)
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=sizes, strides=[s * dtype.itemsize for s in strides], writeable=False
        )
        values = np.array(view, dtype=np.float32)
        if not np.isfinite(values).all():
            raise ExportedProgramError(f"tensor {name} holds NaN or infinite values")
        return values


def _int(value: dict[str, Any]) -> int:
    if "as_int" not in value:
        raise ExportedProgramError(f"a symbolic size or stride where a number was expected: {value}")
    return int(value["as_int"])
