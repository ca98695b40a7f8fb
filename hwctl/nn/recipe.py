"""The training recipe: plain data with no torch import, so the CLI can show its defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainRecipe:
    """Everything that determines a training run; stored in the checkpoint's metadata.

    `eta_from_experiment` names the experiment whose measured programming error set
    `eta` (pcm-model.md §7), or is None when η was chosen by hand.
    """

    arch: str
    data: str = "cifar10"
    eta: float = 0.038
    alpha: float | None = 2.5
    epochs: float = 1.0
    lr: float = 0.01
    weight_decay: float = 1e-4
    momentum: float = 0.9
    batch_size: int = 128
    seed: int = 0
    augment: bool = True
    init: str | None = None
    max_train_images: int | None = None
    eta_from_experiment: int | None = None
