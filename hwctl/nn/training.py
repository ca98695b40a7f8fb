"""Noise-aware training (Joshi et al. 2020, pcm-model.md §7).

Every mini-batch sees fresh additive Gaussian weight noise on each conv/linear layer in
the forward pass — std η·max|W_l| for every weight (the paper's), or shaped like the
chip's own error at the first read (`--pcm-noise`) — the gradient is applied to the
clean weights (straight-through), and each layer is clipped to ±α·std(W_l) after every
step, so the network learns to tolerate PCM programming and read error and keeps no
outlier weights that would squeeze the conductance range of the others.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from drivers.pcm_model import PCMModel
from hwctl.nn.data import ImageSet, Normalizer, augment_crop_flip, batches
from hwctl.nn.inference import accuracy_pct
from hwctl.nn.models import save_checkpoint
from hwctl.nn.recipe import TrainRecipe


def analog_layers(model: nn.Module) -> list[nn.Conv2d | nn.Linear]:
    """The conv and linear layers whose weights go onto PCM."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def noise_sigma(weight: torch.Tensor, recipe: TrainRecipe, device_model: PCMModel) -> torch.Tensor | float:
    """The std of the noise added to each weight of one layer (pcm-model.md §7).

    The paper's uniform noise:   σ = η·max|W_l|
    The chip's error at t0, with G = G_max·|W|/max|W_l| the weight's target conductance:
        σ(W) = k · (max|W_l| / G_max) · sqrt(σ_prog(G)² + σ_read(G, t0)²)
    (§2 programming error, §4 read noise of one read at t0 with Q_s at G; k = `pcm_noise`).
    """
    peak = float(weight.abs().max())
    if recipe.eta is not None:
        return recipe.eta * peak
    assert recipe.pcm_noise is not None  # a recipe has one or the other
    if peak == 0.0:
        return 0.0
    g_us = (weight.detach().abs() * (device_model.g_max_us / peak)).numpy().astype(np.float32)
    sigma_us = np.hypot(device_model.sigma_prog_us(g_us),
                        device_model.read_sigma_us(g_us, g_us, np.asarray(device_model.t0_s)))  # fmt: skip
    return torch.as_tensor(sigma_us * (recipe.pcm_noise * peak / device_model.g_max_us), dtype=weight.dtype)


@contextmanager
def weight_noise(model: nn.Module, recipe: TrainRecipe, generator: torch.Generator,
                 device_model: PCMModel | None = None) -> Iterator[None]:  # fmt: skip
    """Add N(0, σ²) (`noise_sigma`) to each analog layer's weights; restore the clean ones on exit.

    Gradients computed inside are w.r.t. the noisy weights and land in `.grad` of the
    clean parameters once restored (straight-through estimator).
    """
    device_model = device_model or PCMModel()
    clean: list[torch.Tensor] = []
    with torch.no_grad():
        for layer in analog_layers(model):
            w = layer.weight
            clean.append(w.detach().clone())
            w.add_(torch.randn(w.shape, generator=generator) * noise_sigma(w, recipe, device_model))
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, w0 in zip(analog_layers(model), clean, strict=True):
                layer.weight.copy_(w0)


@torch.no_grad()
def clip_weights(model: nn.Module, alpha: float) -> None:
    """Clip each analog layer to ±α·std(W_l)."""
    for layer in analog_layers(model):
        bound = alpha * float(layer.weight.std())
        layer.weight.clamp_(-bound, bound)


EpochCallback = Callable[[int, nn.Module, dict[str, Any]], None]


def train(
    model: nn.Module,
    recipe: TrainRecipe,
    train_set: ImageSet,
    test_set: ImageSet | None = None,
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
    init_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `model` in place by `recipe`; return (and checkpoint each epoch) the metadata.

    A fractional `epochs` is allowed: `epochs=2.5` is two full passes plus half of a third
    (the cosine schedule spans exactly that many steps).
    """
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    noise_gen = torch.Generator().manual_seed(recipe.seed + 1)
    data = train_set.subset(recipe.max_train_images, seed=recipe.seed)
    norm = Normalizer(recipe.arch)
    opt = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    steps_per_epoch = math.ceil(len(data) / recipe.batch_size)
    total_steps = max(1, math.ceil(recipe.epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps)
    meta: dict[str, Any] = {"recipe": asdict(recipe), "history": []}
    if init_meta:
        meta["init_meta"] = init_meta
    step, epoch, t_start = 0, 0, time.perf_counter()
    while step < total_steps:
        model.train()
        bar = tqdm(batches(data, recipe.batch_size, rng), disable=not progress, desc=f"epoch {epoch}")
        seen = correct = 0
        loss_sum = 0.0
        for idx in bar:
            if step >= total_steps:
                break
            x_u8 = augment_crop_flip(data.x[idx], rng) if recipe.augment else data.x[idx]
            x, y = norm(x_u8), torch.as_tensor(data.y[idx])
            with weight_noise(model, recipe, noise_gen):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            sched.step()
            if recipe.alpha is not None:
                clip_weights(model, recipe.alpha)
            step += 1
            seen += len(idx)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}%")
        entry: dict[str, Any] = {
            "epoch": epoch,
            "steps": step,
            "train_loss": loss_sum / max(seen, 1),
            "train_acc_noisy": 100.0 * correct / max(seen, 1),
            "wall_s": time.perf_counter() - t_start,
        }
        if test_set is not None:
            entry["test_acc_fp"] = accuracy_pct(model, test_set, norm)
            meta["fp_test_accuracy"] = entry["test_acc_fp"]
        meta["history"].append(entry)
        meta["epochs_done"] = step / steps_per_epoch
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, recipe.arch, model, meta)
        epoch += 1
    return meta
