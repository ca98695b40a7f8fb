"""What campaigns produce: readouts (per-device vectors), evaluations and drift fits."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from api.schemas.common import UtcDatetime
from hwctl.vocabulary import OUTLIERS_LISTED, CompensationMethod, GdcStatistic


class Readout(BaseModel):
    """One read of every device of a programming run; the vector itself is a download."""

    id: int
    run_id: int
    offset_s: float = Field(description="scheduled offset after programming, station seconds")
    scheduled_s: float = Field(description="scheduled board time")
    board_time_s: float = Field(description="board time when the read started")
    read_at: UtcDatetime
    temperature_c: float | None
    n_devices: int
    draw: int = Field(0, description="read of the chip at this offset, 0 first (schedule.reads_per_point)")


class DeviceSeries(BaseModel):
    """One device's conductance over a run's readouts, oldest first."""

    run_id: int
    device: int = Field(description="index in the mapping's canonical device order")
    t_s: list[float] = Field(description="time since this device was programmed, station seconds")
    g_us: list[float]


class Evaluation(BaseModel):
    id: int
    readout_id: int
    offset_s: float = Field(description="of the readout evaluated")
    method: CompensationMethod
    accuracy: float
    ci_low: float | None
    ci_high: float | None
    n_images: int
    gdc_statistic: GdcStatistic | None = Field(
        description="the per-layer GDC statistic it was evaluated with (it shapes gdc and adabs); "
        "null: stored without one"
    )
    t0_reads: int | None = Field(
        None, description="how many reads at t0 GDC's reference averaged (the read draws stored by then); "
        "null: stored before they were counted (one)"
    )
    created_at: UtcDatetime


class OutlierDevices(BaseModel):
    count: int
    first: list[int] = Field(description=f"the first {OUTLIERS_LISTED} device indices, canonical order")


class DriftFitSummary(BaseModel):
    id: int
    run_id: int
    n_devices: int
    summary: dict[str, Any] = Field(description="chip-level drift statistics as the analysis stored them")
    outliers: dict[str, OutlierDevices] | None = Field(
        description="misbehaving devices per kind (stuck, dead, fast_drifters, non_converged); "
        "null for a fit stored without statistics"
    )
    created_at: UtcDatetime


class DriftFitBins(BaseModel):
    id: int
    bins: list[dict[str, Any]] = Field(description="per target-conductance bin: σ_prog, μ_ν, σ_ν, read noise")
