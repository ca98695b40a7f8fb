"""What the service needs to know of a network, whichever way it arrived: a registered
architecture (from the registry, built once per name) or an uploaded graph of any
architecture (from the graph itself). Every check and job asks `network_spec(checkpoint)`,
never the registry directly, so a graph without a registered architecture goes wherever a
built-in one goes.

An uploaded graph carries no normalisation and no data set: it takes images scaled to
[0, 1] (normalise inside the model before exporting), and its experiments name their data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from hwctl.nn.conductance import analog_modules, first_and_last_layers
from hwctl.nn.models import EXPORTED, Checkpoint, model_spec


@dataclass(frozen=True)
class NetworkSpec:
    """Its architecture (EXPORTED for a graph of its own), input (C, H, W), classes, analog
    layers in forward order, batch norm, normalisation, and the data set it was trained on
    (None: experiments must name one)."""

    architecture: str
    input_shape: tuple[int, ...]
    n_classes: int
    analog_layers: tuple[str, ...]
    first_and_last: tuple[str, str]
    has_batchnorm: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str | None


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _spec_of(architecture: str, model: nn.Module, input_shape: tuple[int, ...], mean: tuple[float, ...],
             std: tuple[float, ...], dataset: str | None) -> NetworkSpec:  # fmt: skip
    model.eval()
    with torch.inference_mode():
        n_classes = int(model(torch.zeros(1, *input_shape)).shape[1])
    return NetworkSpec(
        architecture, input_shape, n_classes, tuple(analog_modules(model)), first_and_last_layers(model),
        has_batchnorm(model), mean, std, dataset,
    )  # fmt: skip


@cache
def registered_spec(arch: str) -> NetworkSpec:
    """A registered architecture's spec (built and run once per name; UnknownModelError if none)."""
    spec = model_spec(arch)
    return _spec_of(arch, spec.build(), spec.input_shape, spec.mean, spec.std, spec.dataset)


def graph_input_shape(checkpoint: Checkpoint) -> tuple[int, ...]:
    """One image's shape from the graph's single input, the batch dimension left out (it may
    be dynamic); every other dimension must be fixed."""
    assert checkpoint.graph is not None
    shapes = checkpoint.graph.input_shapes
    if len(shapes) != 1:
        raise ValueError(f"the graph takes {len(shapes)} inputs; a network takes one batch of images")
    image = shapes[0][1:]
    if len(image) != 3 or any(n is None for n in image):
        shown = "×".join("?" if n is None else str(n) for n in shapes[0])
        raise ValueError(f"the graph takes inputs of shape {shown}; a network takes a batch of images "
                         "N×C×H×W with C, H, W fixed (flatten inside the model)")  # fmt: skip
    return tuple(int(n) for n in image if n is not None)


def network_spec(checkpoint: Checkpoint) -> NetworkSpec:
    """The network's spec: the registry's for a registered architecture, else the graph's."""
    if checkpoint.arch != EXPORTED:
        return registered_spec(checkpoint.arch)
    shape = graph_input_shape(checkpoint)
    channels = shape[0] if len(shape) == 3 else 1
    return _spec_of(EXPORTED, checkpoint.build(), shape, (0.0,) * channels, (1.0,) * channels, None)
