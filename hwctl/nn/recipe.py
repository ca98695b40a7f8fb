"""The training recipe: plain data with no torch import, so the CLI can show its defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainRecipe:
    """Everything that determines a training run; stored in the checkpoint's metadata.

    `eta_from_experiment` names the experiment whose measured programming error set
    `eta` (pcm-model.md §7), or is None when η was chosen by hand. `pcm_noise` = k, when
    set, replaces the uniform η·max|W_l| by k times the device model's error of each
    weight at the first read (σ_prog ⊕ σ_read at t0, `training.noise_sigma`).
    """

    arch: str
    data: str = "cifar10"
    eta: float | None = 0.038
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
    pcm_noise: float | None = None

    def __post_init__(self) -> None:
        if (self.eta is None) == (self.pcm_noise is None):
            raise ValueError("a recipe has either uniform noise (eta) or chip-shaped (pcm_noise), not both")
