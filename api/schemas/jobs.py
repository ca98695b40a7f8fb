"""Jobs: durable units of station work (program, readback, evaluate, analyze)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from api.schemas.common import UtcDatetime
from hwctl.vocabulary import JobKind, JobStatus


class Job(BaseModel):
    id: int
    kind: JobKind
    station_id: int
    experiment_id: int | None
    status: JobStatus
    payload: dict[str, Any]
    run_at_s: float = Field(description="due time, station-clock seconds")
    window_s: float | None = Field(description="after run_at_s + window_s an unstarted job is missed")
    priority: int
    attempts: int
    progress: float = Field(ge=0, le=1, description="fraction done")
    progress_message: str
    cancel_requested: bool
    error: str | None
    result: dict[str, Any] | None
    created_at: UtcDatetime
    started_s: float | None
    finished_s: float | None
