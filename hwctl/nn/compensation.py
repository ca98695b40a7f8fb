"""Digital compensation of conductance drift (pcm-model.md §6) and optional analog I/O effects.

- GDC: per layer α_l(t) = S_l(t0) / S_l(t) for a statistic S_l of the layer's conductances
  read at t0 and at t (`GdcStatistic`); the layer's MVM output is scaled by α_l.
- AdaBS: with the weights read at t, re-estimate every BatchNorm layer's running mean
  and variance from a fixed calibration set (exact population statistics), keeping γ, β.
- AnalogIO: DAC/ADC quantization and per-MVM output noise as forward hooks (off by default).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from hwctl.mapping import DeviceMap
from hwctl.nn.conductance import analog_modules, fold
from hwctl.vocabulary import CompensationMethod, GdcStatistic


def compensation_method(name: str) -> CompensationMethod:
    """The method called `name`; a ValueError that lists the known ones if there is none."""
    try:
        return CompensationMethod(name)
    except ValueError:
        known = ", ".join(CompensationMethod)
        raise ValueError(f"unknown compensation {name!r}; choose from {known}") from None


# α_l(t) = S_l(t0) / S_l(t), the layer's MVM output multiplied by α_l; S_l by statistic:
#   column-sum         S_l = Σ_j |Σ_i W_ij|          all-ones input, signed: in a differential
#                                                     pair a column's sum is a small difference
#                                                     of large noisy numbers
#   both-bitlines      S_l = Σ_devices (G⁺ + G⁻)     both bit-line currents, never cancels
#   abs-weights        S_l = Σ_ij |W_ij|
#   calibration-batch  S_l = Σ |x_l ∗ W_l|           a fixed batch x_l of the layer's inputs
class GdcGains:
    """GDC's per-layer gains for one statistic, from the t0 reference and a readout at t.

    The reference is whatever conductances the caller trusts most at t0 (the mean of
    several reads there averages read noise out). `calibration-batch` takes its fixed
    layer inputs from the network's own (checkpoint) weights on `calibration_x`, once.
    """

    def __init__(
        self,
        statistic: GdcStatistic,
        device_map: DeviceMap,
        model: nn.Module | None = None,
        calibration_x: torch.Tensor | None = None,
    ) -> None:
        self.statistic = GdcStatistic(statistic)
        self.device_map = device_map
        self._layer_inputs: dict[str, tuple[nn.Conv2d | nn.Linear, torch.Tensor]] = {}
        if self.statistic == GdcStatistic.CALIBRATION_BATCH:
            if model is None or calibration_x is None:
                raise ValueError("calibration-batch GDC needs the model and a calibration batch")
            self._layer_inputs = _layer_inputs(model, calibration_x[:CALIBRATION_BATCH_IMAGES])

    def layer_statistics(
        self, g_us: npt.NDArray[np.floating], matrices: Mapping[str, npt.NDArray[np.floating]]
    ) -> dict[str, float]:
        """S_l of every analog layer for the conductances `g_us` (whose weights are `matrices`)."""
        if self.statistic == GdcStatistic.BOTH_BITLINES:
            return self.device_map.layer_conductance_sums_us(np.asarray(g_us))
        if self.statistic == GdcStatistic.CALIBRATION_BATCH:
            return {name: _output_sum(*self._layer_inputs[name], matrices[name]) for name in matrices}
        out = {}
        for name, w in matrices.items():
            w64 = np.asarray(w, np.float64)
            out[name] = float(np.abs(w64.sum(axis=0)).sum() if self.statistic == GdcStatistic.COLUMN_SUM
                              else np.abs(w64).sum())  # fmt: skip
        return out

    def gains(self, reference: Mapping[str, float], now: Mapping[str, float]) -> dict[str, float]:
        """α_l = S_l(t0) / S_l(t); 1 where the layer reads as nothing at t."""
        return {name: reference[name] / now[name] if now[name] > 0 else 1.0 for name in now}


CALIBRATION_BATCH_IMAGES = 32  # enough images for Σ|y_l| to be steady; the layer inputs stay small


@torch.no_grad()
def _layer_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[nn.Conv2d | nn.Linear, torch.Tensor]]:
    """Each analog layer's input on `x` through the model as it is (eval mode)."""
    modules = analog_modules(model)
    captured: dict[str, tuple[nn.Conv2d | nn.Linear, torch.Tensor]] = {}
    handles = [
        module.register_forward_pre_hook(
            lambda m, inp, name=name: captured.__setitem__(name, (m, inp[0].detach().clone())))
        for name, module in modules.items()
    ]  # fmt: skip
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return captured


@torch.no_grad()
def _output_sum(module: nn.Conv2d | nn.Linear, x: torch.Tensor, matrix: npt.NDArray[np.floating]) -> float:
    """Σ|x ∗ W| for the layer's weights given as their crossbar matrix (no bias: the MVM only)."""
    w = fold(matrix, module.weight)
    y = module._conv_forward(x, w, None) if isinstance(module, nn.Conv2d) else nn.functional.linear(x, w)
    return float(y.abs().sum(dtype=torch.float64))


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, calibration_x: torch.Tensor, batch_size: int = 500) -> None:
    """AdaBS: replace each BN layer's running mean/var by its input's population statistics.

    BN layers run in training mode during the pass (as when the statistics were first
    learned, so each chunk is normalized by its own statistics on the way down);
    per-channel sums and sums of squares are accumulated over the whole calibration
    set, so each layer gets its input's exact population mean/variance, not a
    momentum average. (One giant batch is slow on CPU; chunks of ~500 are not.)
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    moments: dict[nn.Module, _Moments] = {}

    def collect(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        moments.setdefault(module, _Moments()).add(inputs[0])

    handles = [bn.register_forward_pre_hook(collect) for bn in bns]
    was_training = model.training
    try:
        model.eval()
        for bn in bns:
            bn.train()
        for i in range(0, len(calibration_x), batch_size):
            model(calibration_x[i : i + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for bn in bns:
        mean, var = moments[bn].mean_var()
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)


class _Moments:
    """Per-channel running sums for exact mean and (unbiased) variance over many batches."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        dims = [0, *range(2, x.ndim)]
        s, ss = x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64)
        self.total = s if self.total is None else self.total + s
        self.total_sq = ss if self.total_sq is None else self.total_sq + ss
        self.count += x.numel() // x.shape[1]

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.total is None or self.total_sq is None:
            raise ValueError("AdaBS saw no calibration data for a BatchNorm layer")
        n = self.count
        mean = self.total / n
        var = (self.total_sq / n - mean * mean) * n / max(n - 1, 1)
        return mean.float(), var.float()


@dataclass(frozen=True)
class AnalogIO:
    """Crossbar periphery: DAC on inputs, ADC on outputs (bits; None = ideal), output noise."""

    dac_bits: int | None = None
    adc_bits: int | None = None
    output_noise_rel: float = 0.0  # std of additive MVM noise relative to max|y| per sample

    @classmethod
    def quantized(cls, bits: int = 8) -> AnalogIO:
        return cls(dac_bits=bits, adc_bits=bits)

    @property
    def ideal(self) -> bool:
        return self.dac_bits is None and self.adc_bits is None and self.output_noise_rel == 0.0

    def attach(
        self, model: nn.Module, seed: int = 0, digital_layers: Collection[str] = ()
    ) -> list[RemovableHandle]:
        """Install hooks on every analog layer (not those kept digital); remove them with `h.remove()`."""
        if self.ideal:
            return []
        gen = torch.Generator().manual_seed(seed)
        handles = []
        for name, module in analog_modules(model).items():
            if name in digital_layers:
                continue
            if self.dac_bits is not None:
                bits = self.dac_bits
                handles.append(
                    module.register_forward_pre_hook(
                        lambda _m, inp, b=bits: (quantize_per_sample(inp[0], b),)
                    )
                )
            handles.append(module.register_forward_hook(lambda m, _inp, out: self._output(m, out, gen)))
        return handles

    def _output(self, module: nn.Module, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        bias = getattr(module, "bias", None)
        mvm = y if bias is None else y - bias.view(1, -1, *([1] * (y.ndim - 2)))
        if self.output_noise_rel > 0:
            peak = mvm.abs().flatten(1).amax(1).view(-1, *([1] * (y.ndim - 1)))
            mvm = mvm + torch.randn(mvm.shape, generator=gen) * self.output_noise_rel * peak
        if self.adc_bits is not None:
            mvm = quantize_per_sample(mvm, self.adc_bits)
        return mvm if bias is None else mvm + bias.view(1, -1, *([1] * (y.ndim - 2)))


def quantize_per_sample(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric uniform quantization to `bits` over each sample's own range max|x|."""
    levels = 2 ** (bits - 1) - 1
    peak = x.abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
    return torch.round(x / peak * levels) * peak / levels
