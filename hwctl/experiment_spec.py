"""What a user asks for when putting a network on a chip: the experiment specification.

The API validates it, stores it on the experiment row and enqueues a `program` job; the
station worker reads it back from the row. It is the one contract between the two.

A submission (`ExperimentRequest`) is held to limits a lab would never mean to exceed
(`SUBMISSION_LIMITS`), and, once its station is known, to that station's clock and pulse
limit (`ExperimentRequest.check_station`); a stored spec is read back as it was accepted.
No float anywhere may be NaN or infinite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from hwctl.program_verify import ProgramSettings
from hwctl.request_model import RequestModel
from hwctl.schedule import DAY_S, duration_label, log_spaced_offsets_s, validate_offsets_s
from hwctl.vocabulary import DEFAULT_GDC_STATISTIC, CompensationMethod, GdcStatistic

YEAR_S = 365.25 * DAY_S


@dataclass(frozen=True)
class SubmissionLimits:
    """What one submission may ask for; each is stated in the 422 that refuses it."""

    max_readbacks: int = 1_000  # each is a job and a readout row of every device (offsets × reads)
    min_spacing_s: float = 1.0  # between two readbacks: a readback takes time on the board
    # Longest schedule per station clock: a real clock must live through it (an accelerated
    # one at 3600× takes 2.4 h per simulated year); a virtual clock jumps, so it may go to
    # the 10-year retention figure PCM is specified against.
    max_horizon_s: tuple[tuple[str, float], ...] = (
        ("real", YEAR_S), ("accelerated", YEAR_S), ("virtual", 10 * YEAR_S),
    )  # fmt: skip
    max_images: int = 100_000  # test or calibration images (the largest test set has 10,000)

    def horizon_s(self, clock_kind: str) -> float:
        return dict(self.max_horizon_s).get(clock_kind, min(s for _, s in self.max_horizon_s))


SUBMISSION_LIMITS = SubmissionLimits()
MAX_NAME_CHARS = 128  # experiments.name
MAX_STATION_NAME_CHARS = 64  # stations.name
STATION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# (least, most) tiles, rows and cols a station may register (a column pair per weight: ≥ 2 cols)
STATION_GEOMETRY_BOUNDS = {"tiles": (1, 4096), "rows": (1, 65536), "cols": (2, 65536)}
MAX_AMPLITUDE_UA = 1000.0  # the largest station pulse limit a station may register


class ProgramSpec(RequestModel):
    """Program-and-verify settings (see hwctl.program_verify.ProgramSettings)."""

    tolerance_us: float | None = Field(None, gt=0, le=5, description="acceptance band half-width, µS")
    max_iterations: int | None = Field(None, ge=1, le=100)
    amplitude_min_ua: float | None = Field(None, gt=0, le=MAX_AMPLITUDE_UA)
    amplitude_max_ua: float | None = Field(None, gt=0, le=MAX_AMPLITUDE_UA)

    def amplitudes_ua(self) -> tuple[float, float]:
        """The pulse amplitude range programming will use: as given, else the loop's default."""
        default = ProgramSettings()
        return (
            default.amplitude_min_ua if self.amplitude_min_ua is None else self.amplitude_min_ua,
            default.amplitude_max_ua if self.amplitude_max_ua is None else self.amplitude_max_ua,
        )


DEFAULT_OFFSETS_S: tuple[float, ...] = tuple(log_spaced_offsets_s(25.0, DAY_S, 20))


def _default_offsets() -> list[float]:
    return list(DEFAULT_OFFSETS_S)


MAX_READS_PER_POINT = 16


class ScheduleSpec(RequestModel):
    """Readback times after programming, in seconds (station clock), and how many whole
    reads of the chip each takes (read draws: their spread is the read noise's share of
    the accuracy's, apart from programming's)."""

    offsets_s: list[float] = Field(default_factory=_default_offsets)
    reads_per_point: int = Field(
        1, ge=1, le=MAX_READS_PER_POINT, strict=True,
        description="consecutive reads of the whole chip at each offset (read draws, 0 first)",
    )  # fmt: skip

    @field_validator("offsets_s")
    @classmethod
    def _positive_sorted(cls, value: list[float]) -> list[float]:
        return validate_offsets_s(value)


def _all_methods() -> list[CompensationMethod]:
    return list(CompensationMethod)


DatasetName = Literal["digits", "cifar10"]
# Image shape (channels, height, width) of each evaluation data set: what a network must take.
DATASET_IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {"digits": (1, 8, 8), "cifar10": (3, 32, 32)}


class _EvaluationSettings(RequestModel):
    """How each readout is turned into accuracy (all but the data set)."""

    methods: list[CompensationMethod] = Field(default_factory=_all_methods)
    n_images: int | None = Field(None, ge=1, description="test images used (None: all)")
    test_dataset_id: int | None = Field(
        None, ge=1, le=2**31 - 1, description="the test set: a labelled data set's id (GET /datasets)"
    )
    calibration_dataset_id: int | None = Field(
        None, ge=1, le=2**31 - 1, description="AdaBS's calibration images: a data set's id, used as is "
        "(no augmentation; a built-in training split is augmented); omitted: the built-in test set's "
        "training split"
    )
    calibration_images: int | None = Field(
        None, ge=1, description="calibration set size (AdaBS, and GDC's calibration-batch statistic)"
    )
    gdc_statistic: GdcStatistic = Field(
        DEFAULT_GDC_STATISTIC,
        description="the per-layer statistic S_l of GDC's gain S_l(t0)/S_l(t) (also taken by AdaBS); "
        "calibration-batch runs calibration images through each layer",
    )
    enabled: bool = True


class EvaluationSpec(_EvaluationSettings):
    """As stored and run: the test set concrete (the API fills in `test_dataset_id`, and
    `dataset` when it is a built-in; a spec stored before ids has the name alone)."""

    dataset: DatasetName | None = "digits"


class EvaluationRequest(_EvaluationSettings):
    """As submitted: the test set by id (`test_dataset_id`) or built-in name (`dataset`), at
    most one; neither means the network architecture's own."""

    dataset: DatasetName | None = Field(
        None, description="test set by built-in name (the same as its id in test_dataset_id); omitted: "
        "the architecture's (digits-resnet: digits, resnets: cifar10); an uploaded graph has none: give one"
    )


FIRST_AND_LAST = "first_and_last"  # the stem conv and the classifier (`hwctl.nn.first_and_last_layers`)
MAX_LAYER_NAME_CHARS = 256
MAX_DIGITAL_LAYERS = 1_000


class MappingSpec(RequestModel):
    """How the network goes on the chip: which of its analog layers stay digital (off the
    chip, computed exactly), by module name, or "first_and_last" (the paper's choice)."""

    digital_layers: list[str] | Literal["first_and_last"] = Field(
        default_factory=list,
        description='analog layers kept digital: module names (e.g. ["conv1", "fc"]) or "first_and_last"',
    )

    @field_validator("digital_layers")
    @classmethod
    def _bounded(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, str):
            return value
        if len(value) > MAX_DIGITAL_LAYERS:
            raise ValueError(f"{len(value)} layers; at most {MAX_DIGITAL_LAYERS} may be kept digital")
        if any(not 1 <= len(name) <= MAX_LAYER_NAME_CHARS for name in value):
            raise ValueError(f"a layer name is 1-{MAX_LAYER_NAME_CHARS} characters")
        if len(set(value)) < len(value):
            raise ValueError("each layer at most once")
        return value

    def kept_digital(self, first_and_last: tuple[str, str]) -> tuple[str, ...]:
        """The layer names kept digital, given the network's first and last analog layers."""
        return first_and_last if self.digital_layers == FIRST_AND_LAST else tuple(self.digital_layers)


class _ExperimentSettings(RequestModel):
    network_id: int = Field(ge=1, le=2**31 - 1)
    station: str = Field(min_length=1, max_length=MAX_STATION_NAME_CHARS)
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS)
    g_max_us: float = Field(25.0, gt=0, le=100)
    program: ProgramSpec = Field(default_factory=ProgramSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    mapping: MappingSpec = Field(default_factory=MappingSpec)


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

    @model_validator(mode="after")
    def _within_limits(self) -> ExperimentRequest:
        problems = submission_problems(self, SUBMISSION_LIMITS)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def check_station(self, clock_kind: str, amplitude_limit_ua: float) -> None:
        """Raise ValueError naming each limit of the station this spec exceeds."""
        problems = station_problems(self, clock_kind, amplitude_limit_ua, SUBMISSION_LIMITS)
        if problems:
            raise ValueError("; ".join(problems))

    def resolved(
        self, dataset: DatasetName | None, test_dataset_id: int | None = None, *, batchnorm: bool = True
    ) -> ExperimentSpec:
        """The spec as stored: the test set concrete (its id, and its name when a built-in); on
        a network without batch norm the default methods leave AdaBS out (asked for by name it
        is refused before this)."""
        fields = self.model_dump()
        fields["evaluation"] |= {"dataset": dataset, "test_dataset_id": test_dataset_id}
        if not batchnorm and "methods" not in self.evaluation.model_fields_set:
            methods = self.evaluation.methods
            fields["evaluation"]["methods"] = [m for m in methods if m != CompensationMethod.ADABS]
        return ExperimentSpec.model_validate(fields)


def submission_problems(spec: ExperimentRequest, limits: SubmissionLimits) -> list[str]:
    """Every limit `spec` exceeds, whatever its station, each saying the limit."""
    problems = []
    offsets_s, reads = spec.schedule.offsets_s, spec.schedule.reads_per_point
    if len(offsets_s) * reads > limits.max_readbacks:
        problems.append(
            f"schedule: {len(offsets_s)} offsets × {reads} reads_per_point = {len(offsets_s) * reads} "
            f"readbacks; at most {limits.max_readbacks} are accepted"
        )
    gaps_s = np.diff(offsets_s)
    if gaps_s.size and gaps_s.min() < limits.min_spacing_s:
        i = int(np.argmin(gaps_s))
        problems.append(
            f"schedule.offsets_s: readbacks at {offsets_s[i]} s and {offsets_s[i + 1]} s are closer than "
            f"the minimum spacing of {limits.min_spacing_s} s"
        )
    longest_s = max(s for _, s in limits.max_horizon_s)
    if offsets_s[-1] > longest_s:
        problems.append(
            f"schedule.offsets_s: the last readback at {duration_label(offsets_s[-1])} is beyond the "
            f"longest schedule accepted, {duration_label(longest_s)}"
        )
    methods = spec.evaluation.methods
    if spec.evaluation.enabled and not methods:
        problems.append("evaluation.methods: give at least one of " + ", ".join(CompensationMethod))
    if len(set(methods)) < len(methods):
        problems.append("evaluation.methods: each method at most once")
    for field in ("n_images", "calibration_images"):
        value = getattr(spec.evaluation, field)
        if value is not None and value > limits.max_images:
            problems.append(f"evaluation.{field}: {value}; at most {limits.max_images} images")
    low_ua, high_ua = spec.program.amplitudes_ua()
    if not low_ua < high_ua:
        problems.append(
            f"program.amplitude_min_ua ({low_ua} µA) must be below program.amplitude_max_ua ({high_ua} µA)"
        )
    return problems


def station_problems(
    spec: ExperimentRequest, clock_kind: str, amplitude_limit_ua: float, limits: SubmissionLimits
) -> list[str]:
    """Every limit of its station `spec` exceeds: the schedule for the station's clock, the
    pulse amplitudes for its limit (never clipped: the user chooses)."""
    problems = []
    horizon_s = limits.horizon_s(clock_kind)
    if spec.schedule.offsets_s[-1] > horizon_s:
        problems.append(
            f"schedule.offsets_s: the last readback at {duration_label(spec.schedule.offsets_s[-1])} is "
            f"beyond {duration_label(horizon_s)}, the longest schedule on a {clock_kind} clock "
            f"(station {spec.station!r})"
        )
    high_ua = spec.program.amplitudes_ua()[1]
    if high_ua > amplitude_limit_ua:
        given = "" if spec.program.amplitude_max_ua is not None else " (the default)"
        problems.append(
            f"program.amplitude_max_ua: {high_ua} µA{given} exceeds station {spec.station!r}'s amplitude "
            f"limit of {amplitude_limit_ua} µA; lower program.amplitude_max_ua"
        )
    return problems
