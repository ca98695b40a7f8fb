from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from drivers.base import Geometry
from hwctl.mapping import DeviceMap, map_network
from hwctl.nn.compensation import AnalogIO, GdcGains, adapt_batchnorm
from hwctl.nn.conductance import export_layers
from hwctl.vocabulary import GdcStatistic


def _mapped_linear(weight: np.ndarray) -> tuple[nn.Linear, DeviceMap]:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
    model = nn.Sequential(layer)
    return layer, map_network(export_layers(model), Geometry(1, 256, 256))


def _gains(statistic: GdcStatistic, device_map: DeviceMap, g_t0: np.ndarray, g_t: np.ndarray,
           model: nn.Module, calibration_x: torch.Tensor) -> float:  # fmt: skip
    gdc = GdcGains(statistic, device_map, model, calibration_x)
    reference = gdc.layer_statistics(g_t0, device_map.weights_from_g(g_t0))
    return gdc.gains(reference, gdc.layer_statistics(g_t, device_map.weights_from_g(g_t)))["0"]


@pytest.mark.parametrize("statistic", list(GdcStatistic))
def test_every_gdc_statistic_restores_the_output_scale_of_a_uniformly_drifted_layer(
    statistic: GdcStatistic,
) -> None:
    rng = np.random.default_rng(0)
    layer, device_map = _mapped_linear(rng.normal(size=(16, 72)).astype(np.float32))
    g_t0 = device_map.target_g_us
    g_t = g_t0 * 0.7 * rng.uniform(0.98, 1.02, g_t0.size)  # ~30 % decay with a small spread
    alpha = _gains(statistic, device_map, g_t0, g_t, nn.Sequential(layer), torch.randn(64, 72))
    assert alpha == pytest.approx(1 / 0.7, rel=0.03)


def test_column_sums_cancel_in_a_differential_layer_while_both_bit_lines_do_not() -> None:
    """Columns whose positive and negative weights balance sum to a small difference of
    large noisy numbers: α from column sums scatters, α from Σ(G⁺ + G⁻) does not."""
    rng = np.random.default_rng(1)
    half = rng.normal(size=(8, 40)).astype(np.float32)
    layer, device_map = _mapped_linear(np.concatenate([half, -half], axis=1))  # every output's row sums to 0
    g_t0 = device_map.target_g_us
    errors: dict[GdcStatistic, list[float]] = {
        s: [] for s in (GdcStatistic.COLUMN_SUM, GdcStatistic.BOTH_BITLINES)
    }
    for draw in range(20):
        noise = np.random.default_rng(100 + draw)
        g_t = g_t0 * 0.7 + noise.normal(0.0, 0.3, g_t0.size)  # drift plus read noise, µS
        for statistic, found in errors.items():
            found.append(
                _gains(statistic, device_map, g_t0, g_t, nn.Sequential(layer), torch.randn(4, 80)) * 0.7 - 1
            )
    assert np.sqrt(np.mean(np.square(errors[GdcStatistic.BOTH_BITLINES]))) < 0.02
    assert np.sqrt(np.mean(np.square(errors[GdcStatistic.COLUMN_SUM]))) > 0.1


def _conv_bn() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2)
    )
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 2)
        net[1].bias.uniform_(-1, 1)
    return net


def test_adabs_sets_exact_population_statistics_whatever_the_chunking() -> None:
    net = _conv_bn().eval()
    x = torch.randn(103, 3, 8, 8) * 2 + 1
    gamma, beta = net[1].weight.detach().clone(), net[1].bias.detach().clone()
    adapt_batchnorm(net, x, batch_size=10)
    with torch.no_grad():
        y = net[0](x).double()
    exact_var = y.var((0, 2, 3), unbiased=True).float()
    torch.testing.assert_close(net[1].running_mean, y.mean((0, 2, 3)).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net[1].running_var, exact_var, rtol=1e-5, atol=1e-6)
    assert torch.equal(net[1].weight, gamma) and torch.equal(net[1].bias, beta)
    assert not net.training  # left in the mode it came in


def test_eight_bit_io_stays_close_and_is_removable() -> None:
    net = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(64, 32)
    ideal = net(x).detach()
    handles = AnalogIO.quantized(8).attach(net)
    quantized = net(x).detach()
    for h in handles:
        h.remove()
    assert 0 < float((quantized - ideal).abs().max()) < 0.05 * float(ideal.abs().max())
    assert torch.equal(net(x).detach(), ideal)
