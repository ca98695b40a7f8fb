"""The analyze job: the run's drift fit and chip statistics, computed once after its last
readback (`hwctl.analysis.run_fit`, the fit the report and the API read back); it moves
the experiment to `done`.

It reads only what the fit needs (`fit_stored_run`), and hands the heap back to the OS
before and after (`hwctl.heap`): the worker's peak is one job's, not the sum of the chip
lane's leftovers and the fit."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from hwctl.analysis.run_fit import MIN_READOUTS_TO_FIT, fit_stored_run, save_run_fit
from hwctl.heap import release_freed_heap
from hwctl.jobs.context import JobContext, JobError, JobPayload, JobType
from hwctl.store.campaign import missed_readbacks, move_experiment
from hwctl.store.fits import latest_fit_summary
from hwctl.store.run_parts import RunRef, latest_run, n_readouts
from hwctl.vocabulary import ExperimentStatus, JobKind, JobLane


class AnalyzePayload(JobPayload):
    run_id: int


def key(run_id: int) -> str:
    """The analyze job's idempotency key: one per run, found again by the last readback."""
    return f"analyze:{run_id}"


def handle(ctx: JobContext, payload: AnalyzePayload) -> None:
    release_freed_heap()
    run = ctx.read("loading the run", lambda conn: latest_run(conn, payload.experiment_id))
    if run is None or run.run_id != payload.run_id:
        found = None if run is None else run.run_id
        raise JobError(f"experiment {payload.experiment_id}'s run is {found}, not {payload.run_id}")
    count = ctx.read("counting the readouts", lambda conn: n_readouts(conn, run.run_id))
    if count < MIN_READOUTS_TO_FIT:
        ctx.write("ending the experiment", lambda conn: _end_experiment(conn, payload))
        ctx.complete({"n_readouts": count, "skipped": f"fewer than {MIN_READOUTS_TO_FIT} readouts"})
        return
    stored = ctx.read("looking for the run's fit", lambda conn: _stored_fit(conn, run.run_id, count))
    if stored is not None:  # stored by an attempt that died before completing the job
        ctx.complete(stored)
        return
    outcome = _fit_and_store(ctx, payload, run)
    release_freed_heap()  # the fit's arrays are gone: hand them back before the next job
    ctx.complete(outcome)


def _stored_fit(conn: Connection, run_id: int, n_readouts_now: int) -> dict[str, Any] | None:
    """The outcome of the run's fit if one covering its `n_readouts_now` readouts is stored:
    the job's restart completes with it instead of storing a second, identical fit."""
    latest = latest_fit_summary(conn, run_id)
    if latest is None or latest[1].get("n_readouts") != n_readouts_now:
        return None
    fit_id, summary = latest
    return {"device_fit_id": fit_id, "n_readouts": n_readouts_now, "n_fitted": summary.get("n_fitted"),
            "already_stored": True}  # fmt: skip


def _fit_and_store(ctx: JobContext, payload: AnalyzePayload, run: RunRef) -> dict[str, int]:
    run_fit = ctx.read("fitting the drift", lambda conn: fit_stored_run(conn, run))

    def store(conn: Connection) -> int:
        fit_id = save_run_fit(conn, payload.run_id, run_fit)
        _end_experiment(conn, payload)
        return fit_id

    fit_id = ctx.write("storing the drift fit", store)
    return {
        "device_fit_id": fit_id,
        "n_readouts": run_fit.n_readouts,
        "n_fitted": int(run_fit.lines.ok.sum()),
    }


def _end_experiment(conn: Connection, payload: AnalyzePayload) -> None:
    """Done, saying which readbacks were missed if any were."""
    reason = missed_readbacks(conn, payload.experiment_id, payload.run_id)
    move_experiment(conn, payload.experiment_id, ExperimentStatus.DONE, reason)


JOB = JobType(JobKind.ANALYZE, JobLane.COMPUTE, AnalyzePayload, handle)
