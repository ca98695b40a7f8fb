"""What a user asks for when putting a network on a chip: the experiment specification.

The API validates it, stores it on the experiment row and enqueues a `program` job; the
station worker reads it back from the row. It is the one contract between the two.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hwctl.schedule import DAY_S, log_spaced_offsets_s, validate_offsets_s
from hwctl.vocabulary import CompensationMethod

# Job kinds the station worker knows; the payload of each is {"experiment_id": int, ...}.
JOB_PROGRAM = "program"
JOB_READBACK = "readback"
JOB_EVALUATE = "evaluate"
JOB_ANALYZE = "analyze"


class ProgramSpec(BaseModel):
    """Program-and-verify settings (see hwctl.program_verify.ProgramSettings)."""

    model_config = ConfigDict(extra="forbid")
    tolerance_us: float | None = Field(None, gt=0, le=5, description="acceptance band half-width, µS")
    max_iterations: int | None = Field(None, ge=1, le=100)
    amplitude_min_ua: float | None = Field(None, gt=0)
    amplitude_max_ua: float | None = Field(None, gt=0)


DEFAULT_OFFSETS_S: tuple[float, ...] = tuple(log_spaced_offsets_s(25.0, DAY_S, 20))


def _default_offsets() -> list[float]:
    return list(DEFAULT_OFFSETS_S)


class ScheduleSpec(BaseModel):
    """Readback times after programming, in seconds (station clock)."""

    model_config = ConfigDict(extra="forbid")
    offsets_s: list[float] = Field(default_factory=_default_offsets)

    @field_validator("offsets_s")
    @classmethod
    def _positive_sorted(cls, value: list[float]) -> list[float]:
        return validate_offsets_s(value)


def _all_methods() -> list[CompensationMethod]:
    return list(CompensationMethod)


DatasetName = Literal["digits", "cifar10"]
# Image shape (channels, height, width) of each evaluation data set: what a network must take.
DATASET_IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {"digits": (1, 8, 8), "cifar10": (3, 32, 32)}


class _EvaluationSettings(BaseModel):
    """How each readout is turned into accuracy (all but the data set)."""

    model_config = ConfigDict(extra="forbid")
    methods: list[CompensationMethod] = Field(default_factory=_all_methods)
    n_images: int | None = Field(None, ge=1, description="test images used (None: all)")
    calibration_images: int | None = Field(None, ge=1, description="AdaBS calibration set size")
    enabled: bool = True


class EvaluationSpec(_EvaluationSettings):
    """As stored and run: the data set is concrete (the API fills it in from the network)."""

    dataset: DatasetName = "digits"


class EvaluationRequest(_EvaluationSettings):
    """As submitted: no data set means the network architecture's own."""

    dataset: DatasetName | None = Field(
        None, description="test set; omitted: the architecture's (digits-resnet: digits, resnets: cifar10)"
    )


class _ExperimentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    network_id: int = Field(ge=1, le=2**31 - 1)
    station: str
    name: str | None = None
    g_max_us: float = Field(25.0, gt=0, le=100)
    program: ProgramSpec = Field(default_factory=ProgramSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)


class ExperimentSpec(_ExperimentSettings):
    """What the station worker runs, read back from the experiment row."""

    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)

    @model_validator(mode="before")
    @classmethod
    def _without_retired_fields(cls, stored: Any) -> Any:
        """Rows stored before `program.seed` was removed (it never had an effect) still load."""
        program = stored.get("program") if isinstance(stored, dict) else None
        if isinstance(program, dict) and "seed" in program:
            stored = {**stored, "program": {k: v for k, v in program.items() if k != "seed"}}
        return stored


class ExperimentRequest(_ExperimentSettings):
    """What a user submits; `resolved` turns it into the stored `ExperimentSpec`."""

    evaluation: EvaluationRequest = Field(default_factory=EvaluationRequest)

    def resolved(self, dataset: DatasetName) -> ExperimentSpec:
        fields = self.model_dump()
        fields["evaluation"]["dataset"] = dataset
        return ExperimentSpec.model_validate(fields)
