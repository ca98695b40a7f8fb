"""Stations: one chip reachable through one resource string."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas.common import UtcDatetime
from hwctl.experiment_spec import MAX_AMPLITUDE_UA, STATION_GEOMETRY_BOUNDS, STATION_NAME_PATTERN
from hwctl.request_model import RequestModel

_TILES, _ROWS, _COLS = (STATION_GEOMETRY_BOUNDS[k] for k in ("tiles", "rows", "cols"))


class GeometryModel(RequestModel):
    tiles: int = Field(ge=_TILES[0], le=_TILES[1])
    rows: int = Field(ge=_ROWS[0], le=_ROWS[1])
    cols: int = Field(ge=_COLS[0], le=_COLS[1])


class StationCreate(RequestModel):
    """What the operator knows about a station; the API never talks to the chip itself."""

    name: str = Field(pattern=STATION_NAME_PATTERN, description="unique name experiments refer to")
    resource: str = Field(
        min_length=1,
        max_length=256,
        description="TCPIP::host::port::SOCKET, ASRL/dev/ttyUSB0::INSTR or sim://",
    )
    chip_serial: str = Field(min_length=1, max_length=64)
    geometry: GeometryModel
    amplitude_limit_ua: float = Field(500.0, gt=0, le=MAX_AMPLITUDE_UA, description="session pulse limit, µA")
    clock_kind: Literal["real", "accelerated", "virtual"] = "real"


class StationLink(BaseModel):
    """The board's link as the station's worker last recorded it."""

    state: Literal["up", "down", "paused"] | None = Field(
        description="null until a worker first opened the board; 'paused': down longer than the "
        "worker's link_pause_after_s, the station's queue waits (readbacks past their window are "
        "missed) and resumes by itself when the board answers"
    )
    down_since: UtcDatetime | None
    attempts: int = Field(description="attempts to re-open the link since it went down")
    worker_heartbeat_at: UtcDatetime | None = Field(description="when the worker last said it was alive")


class StoredGeometry(BaseModel):
    tiles: int
    rows: int
    cols: int


class Station(BaseModel):
    """A registered station as stored: a row an older version let in is listed as it is, with
    what today's checks refuse in it, rather than failing the whole listing."""

    id: int
    name: str
    resource: str
    chip_serial: str
    geometry: StoredGeometry
    amplitude_limit_ua: float | None = Field(
        description="session pulse limit, µA; null only for a stored value that is not a finite number"
    )
    clock_kind: str
    created_at: UtcDatetime
    link: StationLink
    refused: list[str] = Field(
        description="what of the stored settings POST /stations would refuse today (a row "
        "stored by an older version); empty for a station registered as it must be"
    )
