"""A torch model's analog weights ⇄ unrolled crossbar matrices ⇄ per-device conductances.

Every conv and linear weight goes onto PCM (first conv and final FC included) unless
the device map names it digital (`first_and_last_layers` gives the paper's ImageNet
choice); biases and BatchNorm stay digital. A conv weight (C_out, C_in, k, k) is unrolled to a
(k·k·C_in, C_out) matrix by `permute(2, 3, 1, 0)`; a linear weight (out, in) to (in, out).
The rebuild is the exact inverse, vectorized once per readout, so inference from
read-back conductances is plain torch inference afterwards.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from hwctl.mapping import DeviceMap, LayerWeights


class ModelMismatchError(ValueError):
    """The conductances/matrices do not belong to this model's analog layers."""


def analog_modules(model: nn.Module) -> dict[str, nn.Conv2d | nn.Linear]:
    """Conv and linear layers by their module name, in forward-definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def first_and_last_layers(model: nn.Module) -> tuple[str, str]:
    """The names of the first and the last analog layer (the stem conv and the classifier)."""
    names = list(analog_modules(model))
    if not names:
        raise ModelMismatchError("the model has no conv or linear layer")
    return names[0], names[-1]


def unroll(weight: torch.Tensor) -> npt.NDArray[np.float32]:
    """Conv (C_out, C_in, k, k) → (k·k·C_in, C_out); linear (out, in) → (in, out)."""
    w = weight.detach().cpu()
    matrix = w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]) if w.ndim == 4 else w.t()
    return np.ascontiguousarray(matrix.numpy(), dtype=np.float32)


def fold(matrix: npt.NDArray[np.floating], like: torch.Tensor) -> torch.Tensor:
    """Inverse of `unroll`: a matrix back into a tensor shaped like `like`."""
    m = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))
    if like.ndim == 4:
        c_out, c_in, kh, kw = like.shape
        return m.reshape(kh, kw, c_in, c_out).permute(3, 2, 0, 1).contiguous()
    return m.t().contiguous()


def export_layers(model: nn.Module) -> list[LayerWeights]:
    """The model's analog weights as crossbar matrices, named after their modules."""
    return [LayerWeights(name, unroll(m.weight)) for name, m in analog_modules(model).items()]


@torch.no_grad()
def load_matrices(
    model: nn.Module, matrices: Mapping[str, npt.NDArray[np.floating]],
    gains: Mapping[str, float] | None = None, digital_layers: Collection[str] = (),
) -> None:
    """Write matrices (optionally times a per-layer gain, e.g. GDC's α_l) into the model's weights.

    A gain on the weights multiplies exactly the layer's MVM output, leaving the digital
    bias alone, which is what scaling the crossbar's output does. Layers in
    `digital_layers` are not on the chip: their weights are left as they are.
    """
    modules = {name: m for name, m in analog_modules(model).items() if name not in set(digital_layers)}
    if set(matrices) != set(modules):
        missing, extra = set(modules) - set(matrices), set(matrices) - set(modules)
        raise ModelMismatchError(
            f"analog layers differ: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    for name, module in modules.items():
        w = fold(matrices[name], module.weight)
        if w.shape != module.weight.shape:
            raise ModelMismatchError(f"layer {name}: matrix folds to {tuple(w.shape)}, "
                                     f"weight is {tuple(module.weight.shape)}")
        gain = 1.0 if gains is None else float(gains.get(name, 1.0))
        module.weight.copy_(w * gain if gain != 1.0 else w)


def load_conductances(
    model: nn.Module, device_map: DeviceMap, g_us: npt.NDArray[np.floating],
    gains: Mapping[str, float] | None = None,
) -> None:
    """Rebuild the model's analog weights from per-device conductances in canonical order."""
    load_matrices(model, device_map.weights_from_g(np.asarray(g_us)), gains, device_map.digital_layers)
