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


class AnalogLayer(BaseModel):
    name: str = Field(description="module name, e.g. layer1.0.conv1")
    shape: tuple[int, int] = Field(description="crossbar matrix (rows = C_in·k·k, cols = C_out)")
    weights: int


class StationFit(BaseModel):
    station: str
    devices: int = Field(description="the station's chip: tiles × rows × cols")
    fits: bool = Field(description="all analog layers placed on it (an experiment elsewhere is refused)")
    reason: str | None = Field(None, description="why not, with the numbers")


class NetworkDetail(Network):
    """The stored network and what it asks of a chip (upload answer and detail page)."""

    input_shape: list[int] = Field(description="one input, e.g. [3, 32, 32] (C, H, W)")
    analog_layers: list[AnalogLayer] = Field(description="every conv/linear weight, in graph order")
    analog_weights: int
    devices: int = Field(description="devices needed with every layer analog: a differential pair per weight")
    stations: list[StationFit] = Field(description="each registered station, whether the network fits it")
