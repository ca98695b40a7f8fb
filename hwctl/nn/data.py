"""Datasets as uint8/float tensors: CIFAR-10 (npz or the python-pickle batches) and sklearn digits.

CIFAR lives outside the repo: `HWCTL_CIFAR10_DIR`, else `../shared/data` next to the
repo root. Images stay uint8 NHWC until a batch is normalized for a given model.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from hwctl.nn.models import model_spec

if TYPE_CHECKING:
    from hwctl.nn.network_spec import NetworkSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
CIFAR_ENV = "HWCTL_CIFAR10_DIR"


class DatasetMissingError(FileNotFoundError):
    """The dataset files are not where hwctl looks for them."""


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 NHWC (pixels 0–255) plus int64 labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int | None, seed: int = 0) -> ImageSet:
        """A fixed, class-mixed random subset of `n` images (all of them if n is None)."""
        if n is None or n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return ImageSet(self.x[idx], self.y[idx])


def cifar10_dir() -> Path:
    """Where CIFAR-10 is expected: $HWCTL_CIFAR10_DIR, else ../shared/data beside the repo."""
    env = os.environ.get(CIFAR_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def _load_npz(path: Path) -> ImageSet:
    with np.load(path) as f:
        return ImageSet(f["x"], f["y"].astype(np.int64))


def _load_pickle_batch(path: Path) -> ImageSet:
    # The official python batches are pickles of plain dicts; pickle can execute code,
    # so only point hwctl at files you downloaded from the dataset's own page.
    with open(path, "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    x = np.asarray(raw[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return ImageSet(np.ascontiguousarray(x), np.asarray(raw[b"labels"], dtype=np.int64))


def _concat(parts: list[ImageSet]) -> ImageSet:
    return ImageSet(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def load_cifar10(split: str, directory: Path | None = None) -> ImageSet:
    """CIFAR-10 'train' or 'test' from hwctl's npz files or the `cifar-10-batches-py` layout."""
    root = directory or cifar10_dir()
    npz = {"train": ["cifar10_train_part1.npz", "cifar10_train_part2.npz"], "test": ["cifar10_test.npz"]}
    pkl = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    if split not in npz:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    for base, names, loader in (
        (root, npz[split], _load_npz),
        (root / "cifar-10-batches-py", pkl[split], _load_pickle_batch),
        (root, pkl[split], _load_pickle_batch),
    ):
        if all((base / n).is_file() for n in names):
            return _concat([loader(base / n) for n in names])
    raise DatasetMissingError(
        f"CIFAR-10 {split} set not found in {root} (expected {', '.join(npz[split])} or "
        f"cifar-10-batches-py/); set {CIFAR_ENV} to the directory holding it"
    )


def load_digits(split: str, test_fraction: float = 0.25, seed: int = 0) -> ImageSet:
    """scikit-learn's 8×8 digits (ships with sklearn), pixels rescaled 0–16 → 0–255, fixed split."""
    from sklearn.datasets import load_digits as sk_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    d = sk_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    idx = order[:n_test] if split == "test" else order[n_test:]
    return ImageSet(x[idx], d.target[idx].astype(np.int64))


def load_dataset(name: str, split: str) -> ImageSet:
    """A dataset by name: 'cifar10' or 'digits' ('imagenet', ResNet-34's, is not shipped)."""
    if name == "cifar10":
        return load_cifar10(split)
    if name == "digits":
        return load_digits(split)
    if name == "imagenet":
        raise DatasetMissingError("ImageNet is not available to hwctl: no built-in loader and no data here")
    raise ValueError(f"unknown dataset {name!r}; known: cifar10, digits")


class Normalizer:
    """uint8 NHWC batch → float NCHW tensor normalized the way the model was trained."""

    def __init__(self, arch: str | NetworkSpec) -> None:
        spec = model_spec(arch) if isinstance(arch, str) else arch  # a registered name, or any network's spec
        self.mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std).view(1, -1, 1, 1)

    def __call__(self, x_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x_uint8).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std


def augment_crop_flip(x_uint8: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Random crop after zero padding plus random horizontal flip (standard CIFAR augmentation)."""
    n, h, w, _ = x_uint8.shape
    padded = np.pad(x_uint8, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, size=(n, 1))
    dx = rng.integers(0, 2 * pad + 1, size=(n, 1))
    rows = dy + np.arange(h)[None, :]
    cols = dx + np.arange(w)[None, :]
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, ::-1]
    return out


def batches(
    data: ImageSet, batch_size: int, shuffle_rng: np.random.Generator | None = None
) -> list[np.ndarray]:
    """Index arrays of consecutive batches, shuffled when a generator is given."""
    order = shuffle_rng.permutation(len(data)) if shuffle_rng is not None else np.arange(len(data))
    return [order[i : i + batch_size] for i in range(0, len(data), batch_size)]
