"""Input images for inference: a batch array in either layout, its labels and its normalisation.

Images stay as they came (uint8 or float32, NCHW or NHWC) until a batch is taken, so a
10,000-image set costs its own bytes once, not a float copy. A batch is a float32 NCHW
tensor; from NHWC it is a permuted view, i.e. already in torch's channels-last memory
format, which the convolutions take without a copy.

    x_float = x / 255 (uint8) or x (float32);   x_net = (x_float − mean_c) / std_c
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from hwctl.nn.data import ImageSet
from hwctl.nn.models import model_spec

Layout = Literal["NCHW", "NHWC"]
ImageShape = tuple[int, int, int]  # (channels, height, width)
MAX_CHANNELS = 4  # what an axis may hold to be read as channels when the layout is not given


class InputError(ValueError):
    """The inputs cannot be fed to the network: wrong dtype, rank, shape, values or labels."""


@dataclass(frozen=True)
class Normalisation:
    """Per-channel mean and std applied after scaling to [0, 1] (uint8) or as given (float32)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise InputError(f"normalisation needs one mean and one std per channel, got "
                             f"{len(self.mean)} and {len(self.std)}")  # fmt: skip
        if not all(np.isfinite(self.mean)) or not all(np.isfinite(self.std)):
            raise InputError("normalisation mean and std must be finite")
        if min(self.std) <= 0:
            raise InputError(f"normalisation std must be > 0, got {list(self.std)}")

    @classmethod
    def of_architecture(cls, arch: str) -> Normalisation:
        spec = model_spec(arch)
        return cls(tuple(spec.mean), tuple(spec.std))


@dataclass(frozen=True)
class Inputs:
    """Images (N images in `layout`), optional int64 labels, and how to normalise them."""

    x: np.ndarray
    layout: Layout
    y: npt.NDArray[np.int64] | None = None
    normalisation: Normalisation | None = None

    def __post_init__(self) -> None:
        check_images(self.x, self.layout)
        if self.y is not None:
            check_labels(self.y, len(self.x))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def image_shape(self) -> ImageShape:
        """(channels, height, width) of one image, whatever the layout."""
        _, a, b, c = self.x.shape
        return (a, b, c) if self.layout == "NCHW" else (c, a, b)

    @classmethod
    def from_image_set(cls, images: ImageSet, normalisation: Normalisation | None = None) -> Inputs:
        """A built-in data set (uint8 NHWC) as inputs."""
        return cls(images.x, "NHWC", images.y.astype(np.int64), normalisation)

    def batch(self, start: int, stop: int, normalisation: Normalisation) -> torch.Tensor:
        """Images start..stop as a normalised float32 NCHW tensor (the set's own normalisation wins)."""
        norm = self.normalisation or normalisation
        if len(norm.mean) != self.image_shape[0]:
            raise InputError(f"normalisation has {len(norm.mean)} channels, the images {self.image_shape[0]}")
        x = torch.from_numpy(np.ascontiguousarray(self.x[start:stop]))
        if self.layout == "NHWC":
            x = x.permute(0, 3, 1, 2)  # a channels-last view, no copy
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        mean = torch.tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1)
        scale = (1.0 / torch.tensor(norm.std, dtype=torch.float32)).view(1, -1, 1, 1)
        return x.sub_(mean).mul_(scale)


def check_images(x: np.ndarray, layout: str) -> None:
    """uint8 or float32, 4-D, at least one image, finite: anything else is an InputError."""
    if layout not in ("NCHW", "NHWC"):
        raise InputError(f"layout must be NCHW or NHWC, not {layout!r}")
    if x.dtype not in (np.uint8, np.float32):
        raise InputError(f"images must be uint8 or float32, got {x.dtype}")
    if x.ndim != 4:
        raise InputError(f"images must be a 4-D array ({layout}), got shape {list(x.shape)}")
    if x.shape[0] == 0 or min(x.shape[1:]) == 0:
        raise InputError(f"no images: shape {list(x.shape)}")
    if x.dtype == np.float32:
        finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise InputError(f"{bad.size} image(s) hold NaN or inf values, the first at index {int(bad[0])}")


def check_labels(y: np.ndarray, n_images: int) -> None:
    if y.ndim != 1 or y.shape[0] != n_images:
        raise InputError(
            f"labels y must be 1-D with one label per image ({n_images}), got shape {list(y.shape)}"
        )
    if y.dtype.kind not in "iu":
        raise InputError(f"labels y must be integers, got {y.dtype}")
    if y.size and int(y.min()) < 0:
        raise InputError(f"labels must be ≥ 0, got {int(y.min())}")


def infer_layout(shape: Sequence[int]) -> Layout:
    """The layout a 4-D shape must have: channels (≤ 4) on axis 1 or on the last axis, not both."""
    channels_first, channels_last = shape[1] <= MAX_CHANNELS, shape[-1] <= MAX_CHANNELS
    if channels_first != channels_last:
        return "NCHW" if channels_first else "NHWC"
    raise InputError(f"cannot tell the layout of images shaped {list(shape)}: give layout NCHW or NHWC")
