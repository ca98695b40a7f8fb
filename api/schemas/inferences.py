"""Inference jobs: a data set through the network as the chip holds it, and what came out."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from api.schemas.common import UtcDatetime
from api.schemas.jobs import Job
from hwctl.inference.spec import MAX_ID, InferenceSpec


class InferenceRequest(InferenceSpec):
    """As submitted: `dataset_id`, or (multipart) an `inputs` file part instead."""

    dataset_id: int | None = Field(  # type: ignore[assignment]
        None, ge=1, le=MAX_ID, description="GET /datasets lists them; omitted: the uploaded `inputs` part"
    )


class Inference(BaseModel):
    id: int
    experiment_id: int
    dataset_id: int
    readout_id: int | None = Field(description='the readout used ("now": the first fresh read, once taken)')
    job_id: int | None
    status: str = Field(description="its job's status")
    spec: InferenceSpec
    t_since_program_s: float | None = Field(description="age of the (first) readout used, board s")
    summary: dict[str, Any] | None = Field(
        description="once done: readouts used with their age, and per method and repeat the accuracy, "
        "its 95 % interval, top-k accuracy and confusion matrix [true][predicted] when labels are known"
    )
    created_at: UtcDatetime


class InferenceAccepted(BaseModel):
    inference: Inference
    job: Job


class Predictions(BaseModel):
    """Top-k classes per image (most likely first) of one method and repeat."""

    inference_id: int
    method: str
    repeat: int
    offset: int
    top_k: list[list[int]]
    labels: list[int] | None
    total: int


class ReevaluationAccepted(BaseModel):
    series: str
    readout_ids: list[int] = Field(description="re-evaluated, in order")
    inference_ids: list[int] = Field(description="one per readout: GET /inferences/{id}")
    job_ids: list[int]


class SeriesPointOut(BaseModel):
    """One accuracy of one series at one readout."""

    series: str = Field(description='"evaluation": the experiment\'s own; else a re-evaluation\'s name')
    readout_id: int
    t_since_program_s: float
    method: str
    accuracy_pct: float
    inference_id: int | None = Field(None, description="the re-evaluation's inference")


class AccuracyPointOut(BaseModel):
    """The accuracy at one scheduled time for one method, over every read draw of every
    programming of the experiment (`hwctl.analysis.spread`)."""

    offset_s: float = Field(description="the scheduled time after programming the reads share")
    t_since_program_s: float = Field(description="mean over the reads of their mean device read time")
    method: str
    accuracy_pct: float = Field(description="mean over programmings of each one's mean over its read draws")
    ci_low_pct: float | None = Field(description="mean of the reads' 95 % Wilson bounds (same test images)")
    ci_high_pct: float | None
    n_images: int
    n_draws: int = Field(description="reads behind the mean, every programming's together")
    draw_std_pct: float | None = Field(
        description="standard deviation over read draws, pooled within programmings; null: one read each"
    )
    n_programmings: int
    programming_std_pct: float | None = Field(
        description="standard deviation over programmings of their means; null: one programming"
    )
