"""Data sets: image arrays for inference, uploaded or built in."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas.common import UtcDatetime
from hwctl.request_model import RequestModel


class NormalisationModel(RequestModel):
    mean: list[float] = Field(description="per channel, subtracted after scaling uint8 to [0, 1]")
    std: list[float] = Field(description="per channel, divided by after the mean")


class Dataset(BaseModel):
    id: int
    name: str
    builtin: str | None = Field(description="digits | cifar10 for a built-in set (no bytes stored)")
    split: str | None
    sha256: str = Field(description="of the uploaded bytes; builtin:NAME:SPLIT for a built-in set")
    size_bytes: int
    n_images: int
    image_shape: list[int] = Field(description="[channels, height, width] of one image")
    dtype: Literal["uint8", "float32"]
    layout: Literal["NCHW", "NHWC"] = Field(description="as uploaded")
    labelled: bool
    n_classes: int | None = Field(description="largest label + 1; null without labels")
    normalisation: NormalisationModel | None = Field(
        description="the set's own; null: the network's (its architecture's training normalisation)"
    )
    created_at: UtcDatetime
