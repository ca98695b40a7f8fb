"""Health: what a probe (compose, Kubernetes, a lab's monitoring) reads."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas.common import UtcDatetime


class StationHealth(BaseModel):
    name: str
    healthy: bool
    worker_heartbeat_at: UtcDatetime | None = Field(description="when its worker last said it was alive")
    link: str | None = Field(description="the board's link, up or down; null until a worker opened it")
    link_down_since: UtcDatetime | None
    link_attempts: int = Field(description="attempts to re-open the link since it went down")


class Health(BaseModel):
    """200 with status `ok`; 503 with status `unhealthy` and every reason."""

    status: Literal["ok", "unhealthy"]
    database: Literal["ok", "unavailable"]
    stations: list[StationHealth]
    reasons: list[str] = Field(description="what is wrong, one line each; empty when healthy")
