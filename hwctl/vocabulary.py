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
