"""The service's words, each defined once: every module, table constraint, schema and CLI
imports them from here.

They are `StrEnum`s so that a member *is* its string: it is stored in a row, sent in
JSON and compared with what a row holds without conversion.
"""

from __future__ import annotations

from enum import StrEnum


class CompensationMethod(StrEnum):
    """How read-back conductances are turned into weights before inference."""

    NONE = "none"  # weights as read
    GDC = "gdc"  # global drift compensation: one scale per layer from the t0 readout
    ADABS = "adabs"  # batch-norm statistics re-estimated on a calibration set


METHOD_LABELS: dict[CompensationMethod, str] = {
    CompensationMethod.NONE: "none",
    CompensationMethod.GDC: "GDC",
    CompensationMethod.ADABS: "AdaBS",
}


class GdcStatistic(StrEnum):
    """The per-layer quantity S_l whose ratio S_l(t0)/S_l(t) is GDC's gain α_l (pcm-model.md §6)."""

    COLUMN_SUM = "column-sum"  # Σ_cols |Σ_rows W|: all-ones input, signed; cancels in a differential pair
    BOTH_BITLINES = "both-bitlines"  # Σ (G⁺ + G⁻) over the layer's devices: both bit-line currents
    ABS_WEIGHTS = "abs-weights"  # Σ |W|
    CALIBRATION_BATCH = "calibration-batch"  # Σ |x_l·W| over a fixed batch of the layer's inputs


GDC_STATISTIC_LABELS: dict[GdcStatistic, str] = {
    GdcStatistic.COLUMN_SUM: "column sums under an all-ones input, |Σ W|",
    GdcStatistic.BOTH_BITLINES: "both bit-line currents, Σ(G⁺ + G⁻)",
    GdcStatistic.ABS_WEIGHTS: "absolute weights, Σ|W|",
    GdcStatistic.CALIBRATION_BATCH: "outputs on a calibration batch, Σ|y|",
}
# Chosen by measurement: benchmarks/RESULTS.md § accuracy.
DEFAULT_GDC_STATISTIC = GdcStatistic.BOTH_BITLINES


def gdc_statistic_text(statistic: str) -> str:
    """A GDC statistic as the report and the CLI name it: `both-bitlines, both bit-line currents, …`."""
    return f"{statistic}, {GDC_STATISTIC_LABELS[GdcStatistic(statistic)]}"


class JobKind(StrEnum):
    """What a queued job does; each has its module under `hwctl.jobs`."""

    PROGRAM = "program"
    READBACK = "readback"
    EVALUATE = "evaluate"
    ANALYZE = "analyze"
    INFER = "infer"


class JobLane(StrEnum):
    """Chip jobs hold the instrument; compute jobs never touch it (one of each runs at a time)."""

    CHIP = "chip"
    COMPUTE = "compute"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # its worker stopped mid-run; recovery decides what follows
    MISSED = "missed"  # a readback that could not start inside its window


TERMINAL_JOB_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.MISSED}
)


class ExperimentStatus(StrEnum):
    CREATED = "created"
    PROGRAMMING = "programming"
    READING = "reading"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # The board came back without its devices' state or with its clock gone backwards:
    # readouts after it are flagged; an operator resumes, re-programs or cancels.
    BOARD_STATE_LOST = "board_state_lost"


# The statuses a campaign's jobs move an experiment through on their own.
PROGRESSING_EXPERIMENT_STATUSES: tuple[ExperimentStatus, ...] = (
    ExperimentStatus.CREATED,
    ExperimentStatus.PROGRAMMING,
    ExperimentStatus.READING,
)
# At most one experiment per station is in one of these (a partial unique index): one
# waiting for an operator's decision still holds the station's devices.
ACTIVE_EXPERIMENT_STATUSES: tuple[ExperimentStatus, ...] = (
    *PROGRESSING_EXPERIMENT_STATUSES,
    ExperimentStatus.BOARD_STATE_LOST,
)

# Device fits, report tables and API listings name this many outlier devices of each kind.
OUTLIERS_LISTED = 10
