"""Analog periphery on every analog layer: DAC on its inputs, output noise and ADC on its MVM.

The settings are `hwctl.nn.compensation.AnalogIO` (bits None = ideal); these hooks apply
them at inference speed. Per sample s of a layer's input x and MVM output y = x·W:

    DAC:    x_q = round(x · L / p_x) · p_x / L,   p_x = max|x_s|,  L = 2^(bits−1) − 1
    noise:  y' = y + σ_rel · p_y · n,              p_y = max|y_s|,  n ~ N(0, 1) per output
    ADC:    y_q = round(y' · L / p_y') · p_y' / L

The digital bias is added after the ADC, as on the chip. Drawing n afresh for every
output of every MVM would cost more than the convolutions themselves (a ResNet-32 pass
over 10,000 images has ~3·10⁹ outputs), so each attachment draws one bank of
`NOISE_BANK_VALUES` standard normals and every MVM reads a window of it at a random
offset: within one MVM all values are independent draws, across MVMs windows overlap.
A fresh attachment (one per repeat) draws a fresh bank.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from hwctl.nn.compensation import AnalogIO
from hwctl.nn.conductance import analog_modules

PreHook = Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]
Hook = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor]
NOISE_BANK_VALUES = 1 << 24  # 64 MiB of float32; an MVM larger than this draws its own noise


def _levels(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _peak(x: torch.Tensor) -> torch.Tensor:
    """max|x| per sample, shaped to broadcast over the sample (never 0).

    max(max x, −min x): two reductions without a temporary, measured 2–4× faster than
    `abs().amax()` or the ∞-norm on channels-last activations.
    """
    dims = tuple(range(1, x.ndim))
    return torch.maximum(x.amax(dims, keepdim=True), x.amin(dims, keepdim=True).neg_()).clamp_min_(1e-12)


def quantized(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric uniform quantisation over each sample's own range, into a new tensor."""
    scale = _levels(bits) / _peak(x)
    return torch.mul(x, scale).round_().div_(scale)


def quantize_(x: torch.Tensor, bits: int) -> torch.Tensor:
    """The same, in place."""
    scale = _levels(bits) / _peak(x)
    return x.mul_(scale).round_().div_(scale)


class _NoiseBank:
    """Standard normals read in random windows (see the module docstring)."""

    def __init__(self, seed: int, size: int = NOISE_BANK_VALUES) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.values = torch.randn(size, generator=self.generator)

    def like(self, y: torch.Tensor) -> torch.Tensor:
        n = y.numel()
        if n > self.values.numel():
            return torch.randn(y.shape, generator=self.generator)
        start = int(torch.randint(0, self.values.numel() - n + 1, (1,), generator=self.generator))
        return self.values[start : start + n].view(y.shape)


def attach(model: nn.Module, io: AnalogIO, seed: int = 0) -> list[RemovableHandle]:
    """Install the periphery on every conv and linear layer; remove with `h.remove()` each."""
    if io.ideal:
        return []
    bank = _NoiseBank(seed) if io.output_noise_rel > 0 else None
    handles = []
    for module in analog_modules(model).values():
        if io.dac_bits is not None:
            handles.append(module.register_forward_pre_hook(_dac(io.dac_bits)))
        handles.append(module.register_forward_hook(_mvm_output(io, bank)))
    return handles


def _dac(bits: int) -> PreHook:
    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        # A new tensor: the layer's input may also feed a residual path, which stays digital.
        return (quantized(inputs[0], bits),)

    return hook


def _mvm_output(io: AnalogIO, bank: _NoiseBank | None) -> Hook:
    def hook(module: nn.Module, _inputs: tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
        bias = getattr(module, "bias", None)
        shape = (1, -1, *([1] * (y.ndim - 2)))
        if bias is not None:
            y = y - bias.view(shape)
        if bank is not None:
            y.addcmul_(bank.like(y), _peak(y), value=io.output_noise_rel)
        if io.adc_bits is not None:
            quantize_(y, io.adc_bits)
        return y if bias is None else y.add_(bias.view(shape))

    return hook
