"""Networks: an uploaded, validated checkpoint (never unpickled blindly)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from api.schemas.common import UtcDatetime


class Network(BaseModel):
    id: int
    name: str
    architecture: str = Field(description="registered model name, e.g. resnet32")
    sha256: str = Field(description="of the uploaded checkpoint bytes")
    size_bytes: int | None = Field(None, description="checkpoint size; None when stored by path")
    metadata: dict[str, Any] = Field(description="training recipe and results recorded in the checkpoint")
    created_at: UtcDatetime
