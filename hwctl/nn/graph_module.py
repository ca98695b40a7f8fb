"""An uploaded graph (`hwctl.nn.exported`) run as an ordinary torch module, with a fixed
list of operations and nothing the archive names resolved or executed.

Conv, linear and batch-norm ops become real `nn.Conv*d` / `nn.Linear` / `nn.BatchNorm*d`
modules at the place their parameter names give (`layer1.0.conv1.weight` → module
`layer1.0.conv1`), so the state dict has the uploaded names and everything that works
on modules works unchanged: `export_layers` and the rebuild from conductances, GDC,
AdaBS (batch norm in training mode re-estimates its statistics) and the analog I/O
hooks. Every other node must be one of `OPERATIONS`, a table from operator name to the
aten operator it runs (functional ones only: an eval-mode export mutates nothing); an
operator outside it is refused by name when the module is built, before any input is seen.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hwctl.nn.exported import (
    CONV_OPS,
    LINEAR_OPS,
    ExportedNetwork,
    ExportedProgramError,
    GraphNode,
    TensorRef,
    tensor_refs,
)

aten = torch.ops.aten
BATCH_NORM_OPS = frozenset({"torch.ops.aten.batch_norm.default"})
# Operator name → what runs it. Layers with parameters are modules (above); these are the
# parameter-free operations of ResNets, MLPs and plain CNNs as torch.export writes them.
OPERATIONS: dict[str, Callable[..., Any]] = {
    "torch.ops.aten.relu.default": aten.relu.default,
    "torch.ops.aten.sigmoid.default": aten.sigmoid.default,
    "torch.ops.aten.tanh.default": aten.tanh.default,
    "torch.ops.aten.gelu.default": aten.gelu.default,
    "torch.ops.aten.silu.default": aten.silu.default,
    "torch.ops.aten.hardtanh.default": aten.hardtanh.default,
    "torch.ops.aten.add.Tensor": aten.add.Tensor,
    "torch.ops.aten.sub.Tensor": aten.sub.Tensor,
    "torch.ops.aten.mul.Tensor": aten.mul.Tensor,
    "torch.ops.aten.div.Tensor": aten.div.Tensor,
    "torch.ops.aten.cat.default": aten.cat.default,
    "torch.ops.aten.flatten.using_ints": aten.flatten.using_ints,
    "torch.ops.aten.view.default": aten.reshape.default,
    "torch.ops.aten.reshape.default": aten.reshape.default,
    "torch.ops.aten.permute.default": aten.permute.default,
    "torch.ops.aten.transpose.int": aten.transpose.int,
    "torch.ops.aten.slice.Tensor": aten.slice.Tensor,
    "torch.ops.aten.pad.default": aten.pad.default,
    "torch.ops.aten.constant_pad_nd.default": aten.constant_pad_nd.default,
    "torch.ops.aten.max_pool2d.default": aten.max_pool2d.default,
    "torch.ops.aten.avg_pool2d.default": aten.avg_pool2d.default,
    "torch.ops.aten.adaptive_avg_pool2d.default": aten.adaptive_avg_pool2d.default,
    "torch.ops.aten.mean.dim": aten.mean.dim,
    "torch.ops.aten.softmax.int": aten.softmax.int,
    "torch.ops.aten.log_softmax.int": aten.log_softmax.int,
    "torch.ops.aten.dropout.default": aten.dropout.default,
    "torch.ops.aten.clone.default": aten.clone.default,
    # Sizes of a dynamic batch dimension, and integer arithmetic on them.
    "torch.ops.aten.sym_size.int": aten.sym_size.int,
    "_operator.mul": operator.mul,
    "_operator.floordiv": operator.floordiv,
    "_operator.add": operator.add,
    "_operator.sub": operator.sub,
}
_CONV_MODULES: dict[int, type[nn.Module]] = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}
_BATCH_NORM_MODULES: dict[int, type[nn.Module]] = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d,
                                                   5: nn.BatchNorm3d}  # fmt: skip


class ExportedModule(nn.Module):
    """The uploaded network: its layers as modules under their own names, its graph as `forward`."""

    def __init__(self, network: ExportedNetwork) -> None:
        super().__init__()
        self._inputs = network.inputs
        self._outputs = network.outputs
        self._steps: list[tuple[GraphNode, str | None]] = []  # (node, module that runs it)
        for node in network.nodes:
            module_name = _layer_module(self, node, network)
            if module_name is None and node.target not in OPERATIONS:
                raise ExportedProgramError(f"{node.name}: operation {node.target} is not supported")
            self._steps.append((node, module_name))
        owned = {name for name, _ in self.named_parameters()} | {name for name, _ in self.named_buffers()}
        for placeholder, name in {**network.parameters, **network.buffers, **network.constants}.items():
            if name in network.tensors and name not in owned:  # used directly by an operation
                parent, _, leaf = name.rpartition(".")
                value = torch.from_numpy(network.tensors[name].copy())
                if placeholder in network.parameters:
                    _container(self, parent).register_parameter(leaf, nn.Parameter(value))
                else:
                    _container(self, parent).register_buffer(leaf, value)
        named = {**network.parameters, **network.buffers, **network.constants}
        direct = {ref.name for node, module in self._steps if module is None for ref in tensor_refs(node)}
        self._direct = {placeholder: named[placeholder] for placeholder in direct & set(named)}
        # Each intermediate value is dropped after the step that uses it last: holding every
        # activation of a batch until the end cost a ResNet-32 1.6x its time in fresh memory.
        last_use = {ref.name: step for step, (node, _) in enumerate(self._steps) for ref in tensor_refs(node)}
        self._release: list[tuple[str, ...]] = [() for _ in self._steps]
        for name, step in last_use.items():
            if name not in self._outputs:
                self._release[step] += (name,)

    def forward(self, *inputs: torch.Tensor) -> Any:
        if len(inputs) != len(self._inputs):
            raise TypeError(f"the network takes {len(self._inputs)} input(s), got {len(inputs)}")
        values: dict[str, Any] = dict(zip(self._inputs, inputs, strict=True))
        for placeholder, name in self._direct.items():
            values[placeholder] = _find(self, name)
        for (node, module_name), release in zip(self._steps, self._release, strict=True):
            for output, value in zip(node.outputs, self._step(node, module_name, values), strict=True):
                if output is not None:
                    values[output] = value
            for name in release:
                values.pop(name, None)  # a layer's own weight was never a value
        outputs = tuple(values[name] for name in self._outputs)
        return outputs[0] if len(outputs) == 1 else outputs

    def _step(self, node: GraphNode, module_name: str | None, values: dict[str, Any]) -> tuple[Any, ...]:
        """One node's outputs. Its arguments are let go as it returns: held on to by a local
        of `forward`, a released activation lived on through the next layers, and the fresh
        memory they then took cost a ResNet-32 ~35 % more page faults and ~15 % more time."""
        if module_name is not None:
            result = self.get_submodule(module_name)(_resolve(node.arg("input"), values))
        else:
            positional = [_resolve(v, values) for _, is_positional, v in node.args if is_positional]
            keywords = {k: _resolve(v, values) for k, is_positional, v in node.args if not is_positional}
            result = OPERATIONS[node.target](*positional, **keywords)
        return result if len(node.outputs) > 1 else (result,)


def _layer_module(root: nn.Module, node: GraphNode, network: ExportedNetwork) -> str | None:
    """For a conv, linear or batch-norm node: create (once) its module and return its name."""
    if node.target in CONV_OPS or node.target in LINEAR_OPS:
        weight_name = _parameter(node, "weight", network)
        name = weight_name.removesuffix(".weight")
        if not _has_module(root, name):
            _attach(root, name, _weighted_module(node, network, weight_name))
        return name
    if node.target in BATCH_NORM_OPS:
        mean = node.arg("running_mean")
        if not isinstance(mean, TensorRef) or mean.name not in network.buffers:
            raise ExportedProgramError(f"{node.name}: batch norm without running statistics")
        name = network.buffers[mean.name].removesuffix(".running_mean")
        if not _has_module(root, name):
            _attach(root, name, _batch_norm(node, network, name))
        return name
    return None


def _parameter(node: GraphNode, arg: str, network: ExportedNetwork) -> str:
    ref = node.arg(arg)
    if not isinstance(ref, TensorRef) or ref.name not in network.parameters:
        raise ExportedProgramError(f"{node.name}: its {arg} is computed, not a model parameter")
    return network.parameters[ref.name]


def _weighted_module(node: GraphNode, network: ExportedNetwork, weight_name: str) -> nn.Module:
    weight = torch.from_numpy(network.tensors[weight_name].copy())
    has_bias = node.arg("bias") is not None
    module: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
    if node.target in LINEAR_OPS:
        module = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias)
    else:
        if node.arg("transposed"):
            raise ExportedProgramError(f"{node.name}: transposed convolutions are not supported")
        padding = node.arg("padding", 0)
        if isinstance(padding, str):
            raise ExportedProgramError(f"{node.name}: padding {padding!r} is not supported, give numbers")
        groups = int(node.arg("groups", 1))
        if weight.ndim not in _CONV_MODULES:
            raise ExportedProgramError(f"{node.name}: a {weight.ndim}-D convolution weight is not supported")
        conv: Any = _CONV_MODULES[weight.ndim]  # kernel size as given: one entry per spatial dimension
        module = conv(
            weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=node.arg("stride", 1),
            padding=padding, dilation=node.arg("dilation", 1), groups=groups, bias=has_bias,
        )  # fmt: skip
    with torch.no_grad():
        module.weight.copy_(weight)
        if module.bias is not None:
            bias_name = _parameter(node, "bias", network)
            if bias_name != weight_name.removesuffix("weight") + "bias":
                raise ExportedProgramError(f"{node.name}: bias {bias_name} does not belong to {weight_name}")
            module.bias.copy_(torch.from_numpy(network.tensors[bias_name]))
    return module


def _batch_norm(node: GraphNode, network: ExportedNetwork, name: str) -> nn.Module:
    source = node.arg("input")
    rank = network.ranks.get(source.name if isinstance(source, TensorRef) else "", 0)
    if rank not in _BATCH_NORM_MODULES:
        raise ExportedProgramError(f"{node.name}: batch norm over a {rank}-D input is not supported")
    mean = network.tensors[name + ".running_mean"]
    affine = node.arg("weight") is not None
    module = _BATCH_NORM_MODULES[rank](
        mean.size, eps=float(node.arg("eps", 1e-5)), momentum=node.arg("momentum", 0.1), affine=affine
    )
    state = {"running_mean": mean, "running_var": network.tensors[name + ".running_var"]}
    if affine:
        state |= {"weight": network.tensors[_parameter(node, "weight", network)],
                  "bias": network.tensors[_parameter(node, "bias", network)]}  # fmt: skip
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=False)
    return module


def _container(root: nn.Module, path: str) -> nn.Module:
    """The module at dotted `path`, creating empty ones on the way."""
    module = root
    for part in filter(None, path.split(".")):
        child = module._modules.get(part)
        if child is None:
            child = nn.Module()
            module.add_module(part, child)
        module = child
    return module


def _attach(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    _container(root, parent).add_module(leaf, module)


def _has_module(root: nn.Module, name: str) -> bool:
    try:
        root.get_submodule(name)
    except AttributeError:
        return False
    return True


def _find(root: nn.Module, name: str) -> torch.Tensor | None:
    """The parameter or buffer called `name`."""
    parent, _, leaf = name.rpartition(".")
    module = root.get_submodule(parent) if parent else root
    found = module._parameters.get(leaf)
    return found if found is not None else module._buffers.get(leaf)


def _resolve(value: Any, values: dict[str, Any]) -> Any:
    if isinstance(value, TensorRef):
        return values[value.name]
    if isinstance(value, list):
        return [_resolve(v, values) for v in value]
    return value
