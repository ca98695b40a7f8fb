"""Experiments: a network on a station, programmed then read back on a schedule."""

from __future__ import annotations

from pydantic import BaseModel, Field

from api.schemas.common import UtcDatetime
from api.schemas.jobs import Job
from api.schemas.results import Evaluation, Readout
from hwctl.experiment_spec import ExperimentSpec
from hwctl.vocabulary import ExperimentStatus


class Experiment(BaseModel):
    id: int
    name: str
    network_id: int
    station: str
    status: ExperimentStatus
    status_reason: str | None = Field(
        None, description="why the status is what it is, with the evidence (e.g. a board that lost its "
        "state); for 'done', the scheduled readbacks that were missed, if any"
    )
    spec: ExperimentSpec
    created_at: UtcDatetime


class ExperimentAccepted(BaseModel):
    """The answer to a submission: the stored experiment and the job that will program it."""

    experiment: Experiment
    program_job: Job


class ExperimentProgress(BaseModel):
    jobs_total: int
    jobs_done: int = Field(description="jobs in a terminal state")
    readouts_done: int
    readouts_planned: int
    evaluations_done: int


class ExperimentDetail(Experiment):
    progress: ExperimentProgress
    readouts: list[Readout]
    evaluations: list[Evaluation]
