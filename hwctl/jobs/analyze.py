"""The analyze job: the run's drift fit and chip statistics, computed once after its last
readback (`hwctl.analysis.run_fit`, the fit the report and the API read back); it moves
the experiment to `done`."""

from __future__ import annotations

import ctypes
import ctypes.util

from sqlalchemy import Connection

from hwctl.analysis.run_fit import MIN_READOUTS_TO_FIT, fit_run, save_run_fit
from hwctl.analysis.stored import load_experiment
from hwctl.jobs.context import JobContext, JobError, JobPayload, JobType
from hwctl.store.campaign import move_experiment
from hwctl.vocabulary import ExperimentStatus, JobKind, JobLane


class AnalyzePayload(JobPayload):
    run_id: int


def key(run_id: int) -> str:
    """The analyze job's idempotency key: one per run, found again by the last readback."""
    return f"analyze:{run_id}"


def _release_freed_heap() -> None:
    """Hand the heap other jobs freed back to the OS before the fit's large arrays.

    glibc keeps memory freed by a thread in that thread's arena: the chip lane's
    program-and-verify leaves gigabytes there at 43.6 M devices, which this (compute-lane)
    thread cannot reuse, so without a trim the worker's peak is the sum of both jobs'.
    """
    libc = ctypes.util.find_library("c")
    if libc is not None:
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)  # glibc only
        if trim is not None:
            trim(0)


def handle(ctx: JobContext, payload: AnalyzePayload) -> None:
    _release_freed_heap()
    stored = ctx.read("loading the run", lambda conn: load_experiment(conn, payload.experiment_id))
    if stored.run_id != payload.run_id:
        raise JobError(f"experiment {payload.experiment_id}'s run is {stored.run_id}, not {payload.run_id}")
    n_readouts = len(stored.readouts)
    if n_readouts < MIN_READOUTS_TO_FIT:
        ctx.write(
            "ending the experiment",
            lambda conn: move_experiment(conn, payload.experiment_id, ExperimentStatus.DONE),
        )
        ctx.complete({"n_readouts": n_readouts, "skipped": f"fewer than {MIN_READOUTS_TO_FIT} readouts"})
        return
    run_fit = ctx.read("fitting the drift", lambda conn: fit_run(conn, stored))

    def store(conn: Connection) -> int:
        fit_id = save_run_fit(conn, payload.run_id, run_fit)
        move_experiment(conn, payload.experiment_id, ExperimentStatus.DONE)
        return fit_id

    fit_id = ctx.write("storing the drift fit", store)
    ctx.complete({"device_fit_id": fit_id, "n_readouts": n_readouts, "n_fitted": int(run_fit.lines.ok.sum())})


JOB = JobType(JobKind.ANALYZE, JobLane.COMPUTE, AnalyzePayload, handle)
