"""aihwkit's Fusion-chip CSV layout (`aihwkit.utils.export.fusion_export`/`fusion_import`),
for a network programmed here: targets and read-back conductances out, targets in.

The layout: five header lines with one comma-separated entry per analog layer — its id
(1-based position among the model's modules, `ModuleList`s not counted, the model itself
first), its aihwkit class (`AnalogConv2d`, `AnalogLinear`), its number of weights, its
height (output channels) and width (inputs per output: C_in·k_h·k_w) — then a line of
layer names, then one line per layer with one conductance (µS) per weight, in the order
of the layer's weight tensor viewed as (out, C_in·k_h·k_w), row-major. The Fusion chip
holds one device per weight, its sign kept digitally; here the pair (G+, G−) that holds
weight w is written as

    g = sign(w) · (G+ − G−)      (targets: g = |w| · s_l, s_l = g_max / max|W_l|)

so `g / s_l · sign(w)` is the weight the pair represents, exactly as the rebuild here
computes it. A value can be below zero in a readout (drift turned the pair over).
Importing reverses it: each weight's g goes onto the device of its sign (the other device
RESET), in this service's canonical device order.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from hwctl.mapping import DeviceMap
from hwctl.nn.conductance import analog_modules, fold, unroll

AIHWKIT_CLASSES: dict[type[nn.Module], str] = {nn.Conv2d: "AnalogConv2d", nn.Linear: "AnalogLinear"}
VALUE_FORMAT = "%.7g"  # float32 round-trips through text at 9 digits; µS to 7 is 1e-6 relative


class FusionLayoutError(ValueError):
    """A CSV that is not the Fusion layout of this network (header, names, counts, numbers)."""


@dataclass(frozen=True)
class FusionLayer:
    """One analog layer as the header describes it."""

    name: str
    id: int
    cls: str
    num_weights: int
    height: int
    width: int


def fusion_layers(model: nn.Module) -> list[FusionLayer]:
    """The header entries of a torch model's analog layers, numbered as aihwkit numbers them."""
    analog = analog_modules(model)
    layers, index = [], 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            continue
        index += 1
        if name in analog:
            weight = analog[name].weight
            cls = next(label for kind, label in AIHWKIT_CLASSES.items() if isinstance(module, kind))
            height = int(weight.shape[0])
            layers.append(FusionLayer(name, index, cls, weight.numel(), height, weight.numel() // height))
    return layers


def header_lines(layers: list[FusionLayer]) -> list[str]:
    """The five header lines, each without its newline."""
    fields = ("id", "cls", "num_weights", "height", "width")
    return [",".join(str(getattr(layer, f)) for layer in layers) for f in fields]


def write_csv(layers: list[FusionLayer], values: Mapping[str, npt.NDArray[np.floating]]) -> Iterator[str]:
    """The CSV as text chunks, one layer's line at a time (a layer may hold 10⁶ weights)."""
    yield "\n".join(header_lines(layers)) + "\n"
    yield _row([layer.name for layer in layers])
    for layer in layers:
        row = np.asarray(values[layer.name], np.float64).reshape(1, -1)
        if row.size != layer.num_weights:
            raise FusionLayoutError(f"layer {layer.name}: {row.size} values for {layer.num_weights} weights")
        buffer = io.StringIO()
        np.savetxt(buffer, row, fmt=VALUE_FORMAT, delimiter=",", newline="\r\n")
        yield buffer.getvalue()


def _row(cells: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=",").writerow(cells)
    return buffer.getvalue()


def read_csv(text: str, layers: list[FusionLayer]) -> dict[str, npt.NDArray[np.float64]]:
    """Per layer, its values; the header must be this network's, line for line (as aihwkit checks)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=",")
    try:
        for number, expected in enumerate(header_lines(layers), start=1):
            actual = ",".join(next(reader))
            if actual != expected:
                raise FusionLayoutError(
                    f"header line {number} is {actual[:200]!r}; this network's is {expected[:200]!r}"
                )
        names, ours = next(reader), [layer.name for layer in layers]
        if names != ours:
            raise FusionLayoutError(f"layer names {names[:6]}… are not this network's {ours[:6]}…")
        values = {layer.name: _numbers(next(reader), layer) for layer in layers}
    except StopIteration:
        raise FusionLayoutError("the CSV ends before every layer's line") from None
    return values


def _numbers(cells: list[str], layer: FusionLayer) -> npt.NDArray[np.float64]:
    if len(cells) != layer.num_weights:
        raise FusionLayoutError(f"layer {layer.name}: {len(cells)} values for {layer.num_weights} weights")
    try:
        row = np.asarray(cells, dtype=np.float64)
    except ValueError as exc:
        raise FusionLayoutError(f"layer {layer.name}: not a number: {exc}") from None
    if not np.isfinite(row).all():
        raise FusionLayoutError(f"layer {layer.name}: NaN or infinite conductances")
    return row


# -- conductances ⇄ the layout ---------------------------------------------------------------
def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach() for name, m in analog_modules(model).items()}


def fusion_values(model: nn.Module, device_map: DeviceMap, g_us: npt.NDArray[np.floating]
                  ) -> dict[str, npt.NDArray[np.float64]]:  # fmt: skip
    """g = sign(w)·(G+ − G−) per weight, in each layer's (out, C_in·k·k) order."""
    weights = _weights(model)
    out = {}
    for layer in device_map.layers:
        o, n = layer.offset, layer.n_weights
        pair = g_us[o : o + n].astype(np.float64) - g_us[o + n : o + 2 * n]
        like = weights[layer.name]
        sign = np.sign(unroll(like)).ravel()
        sign[sign == 0] = 1.0
        matrix = (sign * pair).reshape(layer.shape)
        out[layer.name] = fold(matrix, like).reshape(like.shape[0], -1).numpy().astype(np.float64).ravel()
    return out


def targets_from_fusion(
    model: nn.Module, device_map: DeviceMap, values: Mapping[str, npt.NDArray[np.floating]]
) -> npt.NDArray[np.float32]:
    """Canonical-order targets: each weight's g on the device of its sign, the other RESET (0)."""
    weights = _weights(model)
    targets = np.zeros(device_map.n_devices, np.float32)
    for layer in device_map.layers:
        like = weights[layer.name]
        g = torch.from_numpy(np.asarray(values[layer.name], np.float32).reshape(like.shape))
        matrix = unroll(g).ravel()  # our (k·k·C_in, C_out) order
        if (matrix < 0).any():
            raise FusionLayoutError(f"layer {layer.name}: a target conductance below 0 µS")
        negative = unroll(like).ravel() < 0
        o, n = layer.offset, layer.n_weights
        targets[o : o + n] = np.where(negative, 0.0, matrix)
        targets[o + n : o + 2 * n] = np.where(negative, matrix, 0.0)
    return targets
