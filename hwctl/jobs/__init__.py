"""The station worker's jobs, one module per kind; `JOBS` is what the worker dispatches on.

A campaign is one programming run (`program`) followed by readbacks (`readback`) at
log-spaced offsets after it (station clock), an evaluation of each readout (`evaluate`)
and the drift fit after the last one (`analyze`). Programming and readbacks run in the
station's chip lane; evaluation and analysis in its compute lane, without the chip.

A new kind is a module defining its payload model, handler and `JOB = JobType(...)`,
plus one line below.
"""

from __future__ import annotations

from typing import Any

from hwctl.jobs import analyze, evaluate, infer, program, readback
from hwctl.jobs.context import JobType
from hwctl.vocabulary import JobKind

JOBS: dict[JobKind, JobType[Any]] = {
    job.kind: job
    for job in (
        program.JOB,
        readback.JOB,
        evaluate.JOB,
        analyze.JOB,
        infer.JOB,
    )
}
