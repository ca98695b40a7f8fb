"""Plain batched classification accuracy of a torch model on an ImageSet."""

from __future__ import annotations

import torch
from torch import nn

from hwctl.nn.data import ImageSet, Normalizer


@torch.no_grad()
def predict(model: nn.Module, data: ImageSet, normalizer: Normalizer, batch_size: int = 500) -> torch.Tensor:
    """Predicted class per image (model in eval mode)."""
    model.eval()
    out = [model(normalizer(data.x[i : i + batch_size])).argmax(1) for i in range(0, len(data), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy_pct(model: nn.Module, data: ImageSet, normalizer: Normalizer, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent."""
    pred = predict(model, data, normalizer, batch_size)
    return 100.0 * float((pred == torch.as_tensor(data.y)).float().mean())
