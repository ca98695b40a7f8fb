"""The drift fit of an experiment's run: computed once, stored, read back by everyone.

The analyze job fits every device of the run after its last readback (`fit_run`) and
stores the lines with the chip statistics (`save_run_fit`); the report, the API and the
dashboard read that stored fit (`stored_run_fit`) instead of fitting again. Before the
job has run (a report in the middle of a campaign), the same `fit_run` gives the fit of
the readouts so far, and callers label it provisional: it is the fit the job would store
from those readouts, never a differently computed one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from hwctl.analysis.drift import fit_drift
from hwctl.analysis.statistics import ChipStatistics, chip_statistics
from hwctl.analysis.stored import StoredExperiment
from hwctl.program_verify import DeviceStatus
from hwctl.store.errors import NotFoundError
from hwctl.store.fits import FittedLines, latest_device_fit, save_device_fit

# A drift line per device needs three points to have a residual.
MIN_READOUTS_TO_FIT = 3


@dataclass(frozen=True)
class RunFit:
    """Per-device lines and chip statistics of one run's readouts; `fit_id` None = not stored."""

    lines: FittedLines
    statistics: ChipStatistics
    n_readouts: int
    fit_id: int | None = None

    @property
    def provenance(self) -> str:
        """Where the fit comes from, in a sentence for reports."""
        if self.fit_id is not None:
            return f"Drift fit #{self.fit_id}, stored by the analyze job from {self.n_readouts} readouts."
        return (
            f"Provisional drift fit: computed for this page from the {self.n_readouts} readouts so far and "
            "not stored; the analyze job stores the experiment's fit after its last readback."
        )


def fit_run(stored: StoredExperiment) -> RunFit:
    """Fit every device of the run from all its readouts, each device aged from its own programming.

    Devices program-and-verify did not converge count as non-converged in the statistics.
    """
    device_map, programming = stored.require_readouts()
    ages_s = stored.device_ages_s()
    fit = fit_drift(stored.readout_matrix_us(), ages_s, min_points=MIN_READOUTS_TO_FIT)
    converged = programming.status == DeviceStatus.CONVERGED
    statistics = chip_statistics(fit, device_map.target_g_us, ages_s, converged=converged)
    return RunFit(fit, statistics, len(stored.readouts))


def save_run_fit(conn: Connection, run_id: int, run_fit: RunFit) -> int:
    """Store `run_fit` (from `fit_run`) as run `run_id`'s current fit; returns its id."""
    return save_device_fit(
        conn,
        run_id,
        run_fit.lines,
        statistics=run_fit.statistics.to_dict(),
        extra_summary={"n_readouts": run_fit.n_readouts},
    )


def stored_run_fit(conn: Connection, stored: StoredExperiment) -> RunFit | None:
    """The run's stored fit if it covers every readout stored now, else None.

    A fit stored before revision 0002 (no status) or without statistics cannot stand in
    for `fit_run` and counts as absent.
    """
    if stored.run_id is None:
        return None
    try:
        fit = latest_device_fit(conn, stored.run_id)
    except NotFoundError:
        return None
    n_readouts = fit.summary.get("n_readouts")
    lines = fit.lines
    if lines is None or fit.statistics is None or n_readouts != len(stored.readouts):
        return None
    return RunFit(lines, ChipStatistics.from_dict(fit.statistics), n_readouts, fit.id)
