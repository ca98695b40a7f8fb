"""What a campaign left in the store, judged against its schedule and against the chip.

Nothing lost, nothing doubled, nothing wrong reported as fine:

- every scheduled offset has exactly one readout, unless its readback was missed with a
  reason (lost: neither; duplicated: more than one, across every run of the experiment);
- every readout not flagged `suspect` agrees with the programmed state drifted to its read
  time, and the chip read directly now agrees with the latest unflagged readout (a blank
  or foreign board fails both);
- late: a readback that started more than `LATE_AFTER_S` after its scheduled board time.

The agreement test is the drift/noise band of the device model (pcm-model.md §3-4): a
programmed device only drifts down, G(t) = G(t_ref)·(t/t_ref)^−ν with ν ≤ NU_MAX, times
read noise, so G(t)/G(t_ref) ∈ [RATIO_FLOOR·(t/t_ref)^−NU_MAX, RATIO_CEILING].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine, func, select

from hwctl.station import FINGERPRINT_MIN_AGE_S, NU_MAX, RATIO_CEILING, RATIO_FLOOR
from hwctl.store.readouts import device_read_times_s, load_programming_result, load_readout
from hwctl.store.schema import experiments, jobs, programming_runs, readout_blocks, readouts
from hwctl.vocabulary import PROGRESSING_EXPERIMENT_STATUSES, JobKind, JobStatus
from tests.faults.lab import BoardProbe

LATE_AFTER_S = 2.0  # board seconds after its scheduled time a readback may start and not be late
SAMPLE_DEVICES = 512  # programmed devices compared with the chip per readout
SAMPLE_MIN_G_US = 5.0  # below, read noise alone takes a device out of the band now and then
AGREEING_FRACTION = 0.9  # of them inside the band, for a readout to agree (read-noise outliers aside)
_OPEN_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


def within_drift_band(
    g_ref_us: npt.NDArray[np.float32], age_ref_s: npt.NDArray[np.float64],
    g_us: npt.NDArray[np.float32], age_s: npt.NDArray[np.float64],
) -> npt.NDArray[np.bool_]:  # fmt: skip
    """Per device: could `g_us` at `age_s` be `g_ref_us` at `age_ref_s`, drifted and re-read?"""
    age_ref_s = np.maximum(age_ref_s, FINGERPRINT_MIN_AGE_S)
    age_s = np.maximum(age_s, age_ref_s)
    ratio = g_us / g_ref_us
    # ratio ∈ [RATIO_FLOOR·(age/age_ref)^−NU_MAX, RATIO_CEILING]
    floor = RATIO_FLOOR * (age_s / age_ref_s) ** -NU_MAX
    return np.asarray((ratio >= floor) & (ratio <= RATIO_CEILING))


@dataclass(frozen=True)
class StoredReadout:
    id: int
    run_id: int
    offset_s: float
    scheduled_s: float
    board_time_s: float
    suspect: str | None
    read_at: Any


@dataclass
class Audit:
    """The verdict on one experiment's data; `problems()` lists what breaks the rules above."""

    experiment_status: str
    status_reason: str | None
    offsets_s: list[float]
    readouts: list[StoredReadout]
    missed: dict[float, str]
    lost: list[float]
    duplicated: list[float]
    late: list[float]
    disagreeing: list[str]  # unflagged readouts outside the band of the programmed state
    direct_read: str | None  # None: the chip now agrees with the latest unflagged readout
    open_jobs: list[str]
    failed_jobs: list[str]
    programming_runs: int
    attempts: dict[str, int] = field(default_factory=dict)  # job label → runs it took

    @property
    def flagged(self) -> list[StoredReadout]:
        return [r for r in self.readouts if r.suspect is not None]

    def figures(self) -> dict[str, Any]:
        """The counts a report gives."""
        return {
            "lost": len(self.lost), "duplicated": len(self.duplicated), "late": len(self.late),
            "missed": len(self.missed), "flagged": len(self.flagged), "readouts": len(self.readouts),
            "experiment_status": self.experiment_status, "status_reason": self.status_reason,
            "attempts": self.attempts,
        }  # fmt: skip


def settled(engine: Engine, experiment_id: int) -> bool:
    """No job of the experiment is queued or running, and the experiment no longer moves by
    itself (done, failed, cancelled, or waiting for an operator)."""
    with engine.connect() as conn:
        open_jobs = conn.execute(
            select(func.count()).where(
                jobs.c.experiment_id == experiment_id, jobs.c.status.in_(_OPEN_JOB_STATUSES)
            )
        ).scalar_one()
        status = conn.execute(
            select(experiments.c.status).where(experiments.c.id == experiment_id)
        ).scalar_one()
    return open_jobs == 0 and status not in PROGRESSING_EXPERIMENT_STATUSES


def work_signature(engine: Engine, experiment_id: int) -> tuple[Any, ...]:
    """What changes when the campaign gets work done: blocks and readouts stored,
    programming's progress committed."""
    with engine.connect() as conn:
        partial_blocks = conn.execute(
            select(func.count()).select_from(readout_blocks.join(jobs, readout_blocks.c.job_id == jobs.c.id))
            .where(jobs.c.experiment_id == experiment_id)
        ).scalar_one()  # fmt: skip
        stored = conn.execute(
            select(func.count()).select_from(readouts.join(programming_runs))
            .where(programming_runs.c.experiment_id == experiment_id)
        ).scalar_one()  # fmt: skip
        programming = conn.execute(
            select(jobs.c.progress, jobs.c.progress_message)
            .where(jobs.c.experiment_id == experiment_id, jobs.c.kind == JobKind.PROGRAM)
        ).all()  # fmt: skip
    return partial_blocks, stored, tuple(tuple(row) for row in programming)


def _job_label(row: Any) -> str:
    if row.kind == JobKind.READBACK:
        return f"readback@{row.payload['offset_s']:g}s"
    return str(row.kind)


def _stored_readouts(conn: Connection, experiment_id: int) -> list[StoredReadout]:
    rows = conn.execute(
        select(readouts.c.id, readouts.c.run_id, readouts.c.offset_s, readouts.c.scheduled_s,
               readouts.c.board_time_s, readouts.c.suspect, readouts.c.read_at)
        .select_from(readouts.join(programming_runs))
        .where(programming_runs.c.experiment_id == experiment_id)
        .order_by(readouts.c.board_time_s, readouts.c.id)
    )  # fmt: skip
    return [StoredReadout(**row._asdict()) for row in rows]


def audit_campaign(engine: Engine, experiment_id: int, probe: BoardProbe | None) -> Audit:
    """The verdict on `experiment_id`; `probe` (None: the chip is not there to ask) reads the
    chip directly for the last comparison."""
    with engine.connect() as conn:
        experiment = conn.execute(
            select(experiments.c.status, experiments.c.status_reason, experiments.c.settings)
            .where(experiments.c.id == experiment_id)
        ).one()  # fmt: skip
        offsets_s = [float(t_s) for t_s in experiment.settings["schedule"]["offsets_s"]]
        job_rows = conn.execute(
            select(jobs).where(jobs.c.experiment_id == experiment_id).order_by(jobs.c.id)
        ).all()
        stored = _stored_readouts(conn, experiment_id)
        run_ids = conn.execute(
            select(programming_runs.c.id).where(programming_runs.c.experiment_id == experiment_id)
        ).scalars().all()  # fmt: skip
        disagreeing, direct = _disagreements(conn, stored, probe)

    per_offset: dict[float, int] = {}
    for readout in stored:
        per_offset[readout.offset_s] = per_offset.get(readout.offset_s, 0) + 1
    missed = {
        float(row.payload["offset_s"]): str(row.error)
        for row in job_rows
        if row.kind == JobKind.READBACK and row.status == JobStatus.MISSED and row.error
    }
    return Audit(
        experiment_status=experiment.status, status_reason=experiment.status_reason, offsets_s=offsets_s,
        readouts=stored, missed=missed,
        lost=[t for t in offsets_s if t not in per_offset and t not in missed],
        duplicated=[t for t, n in per_offset.items() if n > 1],
        late=[r.offset_s for r in stored if r.board_time_s - r.scheduled_s > LATE_AFTER_S],
        disagreeing=disagreeing, direct_read=direct,
        open_jobs=[f"{_job_label(r)} {r.status}" for r in job_rows if r.status in _OPEN_JOB_STATUSES],
        failed_jobs=[f"{_job_label(r)} {r.status}: {r.error}" for r in job_rows
                     if r.status in (JobStatus.FAILED, JobStatus.INTERRUPTED, JobStatus.CANCELLED)],
        programming_runs=len(run_ids),
        attempts={_job_label(r): int(r.attempts) for r in job_rows},
    )  # fmt: skip


def _disagreements(
    conn: Connection, stored: list[StoredReadout], probe: BoardProbe | None
) -> tuple[list[str], str | None]:
    """Unflagged readouts outside the band of their run's programmed state, and how the chip
    read now compares with the latest unflagged readout (None: it agrees, or nothing to compare)."""
    disagreeing: list[str] = []
    latest: tuple[StoredReadout, npt.NDArray[np.float32], npt.NDArray[np.float64]] | None = None
    samples: dict[int, tuple[npt.NDArray[np.intp], Any]] = {}
    for readout in stored:
        if readout.suspect is not None:
            continue
        if readout.run_id not in samples:
            programmed = load_programming_result(conn, readout.run_id)
            eligible = np.flatnonzero(programmed.g_final_us >= SAMPLE_MIN_G_US)
            picks = np.linspace(0, eligible.size - 1, min(SAMPLE_DEVICES, eligible.size)).astype(int)
            samples[readout.run_id] = (eligible[picks], programmed)
        sample, programmed = samples[readout.run_id]
        g_us = load_readout(conn, readout.id).g_us[sample]
        read_s = device_read_times_s(conn, readout.id)[sample]
        inside = within_drift_band(
            programmed.g_final_us[sample],
            np.zeros(sample.size),
            g_us,
            read_s - programmed.programmed_s[sample],
        )
        if inside.mean() < AGREEING_FRACTION:
            disagreeing.append(
                f"readout {readout.id} at {readout.offset_s:g} s: {inside.mean():.0%} of {sample.size} "
                f"devices in the band of the programmed state (median read/programmed "
                f"{np.median(g_us / programmed.g_final_us[sample]):.3g}), not flagged"
            )
        latest = (readout, g_us, read_s)
    if probe is None or latest is None:
        return disagreeing, None
    readout, g_us, read_s = latest
    sample, programmed = samples[readout.run_id]
    now_s, g_now_us = probe.read(programmed.addresses[sample])
    programmed_s = programmed.programmed_s[sample]
    inside = within_drift_band(g_us, read_s - programmed_s, g_now_us, now_s - programmed_s)
    if inside.mean() >= AGREEING_FRACTION:
        return disagreeing, None
    return disagreeing, (
        f"the chip read directly at board time {now_s:.3f} s: {inside.mean():.0%} of {sample.size} devices "
        f"in the band of readout {readout.id} (at {readout.offset_s:g} s; median now/stored "
        f"{np.median(g_now_us / g_us):.3g})"
    )
