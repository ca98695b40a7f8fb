"""Shared fixtures: a small noise-trained digits model (seconds on CPU) and CIFAR if present."""

from __future__ import annotations

import pytest

from hwctl.nn.data import DatasetMissingError, ImageSet, load_cifar10, load_digits
from hwctl.nn.models import Checkpoint, build_model
from hwctl.nn.training import TrainRecipe, train

DIGITS_RECIPE = TrainRecipe("digits-resnet", data="digits", eta=0.038, alpha=2.5, epochs=4, lr=0.05,
                            batch_size=64, augment=False)  # fmt: skip


@pytest.fixture(scope="session")
def digits_train() -> ImageSet:
    return load_digits("train")


@pytest.fixture(scope="session")
def digits_test() -> ImageSet:
    return load_digits("test")


@pytest.fixture(scope="session")
def digits_checkpoint(digits_train: ImageSet, digits_test: ImageSet) -> Checkpoint:
    model = build_model("digits-resnet")
    meta = train(model, DIGITS_RECIPE, digits_train, digits_test, progress=False)
    return Checkpoint("digits-resnet", {k: v.clone() for k, v in model.state_dict().items()}, meta)


@pytest.fixture(scope="session")
def cifar_test() -> ImageSet:
    try:
        return load_cifar10("test")
    except DatasetMissingError as exc:
        pytest.skip(f"CIFAR-10 not available: {exc}")
