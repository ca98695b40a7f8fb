from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hwctl.nn.compensation import AnalogIO, adapt_batchnorm, gdc_gains


def test_gdc_restores_the_output_scale_of_a_drifted_layer() -> None:
    rng = np.random.default_rng(0)
    w_t0 = rng.normal(size=(72, 16)).astype(np.float32)
    drift = (0.7 * rng.uniform(0.95, 1.05, size=w_t0.shape)).astype(np.float32)  # ~30 % decay, spread
    w_t = w_t0 * drift
    alpha = gdc_gains({"conv": w_t0}, {"conv": w_t})["conv"]
    x = rng.normal(size=(500, 72))
    ratio = np.abs(x @ (alpha * w_t)).sum() / np.abs(x @ w_t0).sum()
    assert abs(ratio - 1) < 0.02
    assert abs(alpha - 1 / 0.7) < 0.05


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
