"""The drift fit of an experiment's run: computed once, stored, read back by everyone.

The analyze job fits every device of the run after its last readback (`fit_run`) and
stores the lines with the chip statistics (`save_run_fit`); the report, the API and the
dashboard read that stored fit (`stored_run_fit`) instead of fitting again. Before the
job has run (a report in the middle of a campaign), the same `fit_run` gives the fit of
the readouts so far, and callers label it provisional: it is the fit the job would store
from those readouts, never a differently computed one.

The fit walks the devices in ranges (`fit_ranges`): each range brings its conductances
and ages from every readout, is fitted, is added to the chip statistics
(`StatisticsAccumulator`) and leaves only the stored lines and ν's standard error
(float32). Memory is one range of every readout plus 17 bytes a device, not the
readouts: a 43.6 M-device chip read 20 times never holds its 3.5 GB of readouts or
7 GB of ages.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection

from drivers.pcm_model import PCMModel
from hwctl.analysis.drift import DEFAULT_T0_S, fit_drift
from hwctl.analysis.statistics import ChipStatistics, StatisticsAccumulator, model_relative_read_noise
from hwctl.analysis.stored import StoredExperiment
from hwctl.program_verify import DeviceStatus
from hwctl.store.errors import NotFoundError
from hwctl.store.fits import FittedLines, latest_device_fit, save_device_fit
from hwctl.store.readouts import iter_readout_ranges, list_readouts, read_block_starts, read_times_in_range
from hwctl.store.run_parts import RunRef, map_targets, programming_vectors
from hwctl.store.scans import scanning

# A drift line per device needs three points to have a residual.
MIN_READOUTS_TO_FIT = 3
# Devices per range: 20 readouts × 512 Ki devices × (4 B of G + 4 B of age) ≈ 84 MB in flight.
RANGE_DEVICES = 1 << 19
# The per-device results a range leaves behind, kept as float32 (the stored fit is float32):
# the stored lines and ν's standard error, which flagging fast drifters needs after every
# range is in (17 bytes a device with the status).
_FLOAT_FIELDS = ("nu", "g_t0_us", "r_squared", "nu_stderr")


@dataclass(frozen=True)
class ReadoutRange:
    """Devices `first_device`… of every readout of a run: conductances and each device's age."""

    first_device: int
    g_us: npt.NDArray[np.float32]  # (n_readouts, n)
    ages_s: npt.NDArray[np.floating]  # (n_readouts, n): time since that device was programmed


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


def fit_run(conn: Connection, stored: StoredExperiment, range_devices: int = RANGE_DEVICES) -> RunFit:
    """Fit every device of the run from all its readouts, streamed from the store range by
    range, each device aged from its own programming.

    Devices program-and-verify did not converge count as non-converged in the statistics.
    """
    device_map, programming = stored.require_readouts()
    converged = programming.status == DeviceStatus.CONVERGED
    ids = [r.id for r in stored.readouts]
    ranges = stored_ranges(conn, ids, stored.block_starts, programming.programmed_s, range_devices)
    return fit_ranges(ranges, device_map.target_g_us, len(ids), converged)


def fit_stored_run(conn: Connection, run: RunRef, range_devices: int = RANGE_DEVICES) -> RunFit:
    """`fit_run` of a stored run without loading it whole (the analyze job): only the targets,
    each device's outcome and programming time (13 bytes a device) and the readouts' rows
    are read besides the readouts' ranges, not the device map's addresses or the rest of
    the programming result."""
    with scanning(conn):  # on SQLite, the pages read are not left resident
        stored = list_readouts(conn, run.run_id)
        block_starts = [read_block_starts(conn, r.id)[0] for r in stored]
        vectors = programming_vectors(conn, run.run_id, ("status", "programmed_s"))
        converged = vectors.pop("status") == DeviceStatus.CONVERGED
        ids = [r.id for r in stored]
        ranges = stored_ranges(conn, ids, block_starts, vectors["programmed_s"], range_devices)
        return fit_ranges(ranges, map_targets(conn, run.mapping_id), len(ids), converged)


def fit_ranges(
    ranges: Iterable[ReadoutRange],
    target_g_us: npt.NDArray[np.floating],
    n_readouts: int,
    converged: npt.NDArray[np.bool_],
    model: PCMModel | None = None,
) -> RunFit:
    """The run's fit from its readouts given range by range, in device order, covering
    every device of `target_g_us` once; each range is fitted (`fit_drift`), predicted
    (`model_relative_read_noise`) and added to the chip statistics as the whole chip
    would be, then dropped."""
    model = model or PCMModel()
    n_devices = target_g_us.size
    kept = {name: np.empty(n_devices, np.float32) for name in _FLOAT_FIELDS}
    status = np.empty(n_devices, np.int8)
    statistics = StatisticsAccumulator(model)
    reached = 0
    for part in ranges:
        if part.first_device != reached or part.g_us.shape[0] != n_readouts:
            raise ValueError(
                f"range at device {part.first_device} with {part.g_us.shape[0]} readouts does not "
                f"follow device {reached} of {n_readouts} readouts"
            )
        fitted = fit_drift(part.g_us, part.ages_s, min_points=MIN_READOUTS_TO_FIT)
        devices = slice(reached, reached + fitted.n_devices)
        if devices.stop > n_devices:
            raise ValueError(f"the ranges run past the {n_devices} devices")
        for name in _FLOAT_FIELDS:
            kept[name][devices] = getattr(fitted, name)
        status[devices] = fitted.status
        predicted = model_relative_read_noise(fitted, part.ages_s, model)
        statistics.add(fitted, target_g_us[devices], predicted, converged[devices])
        reached = devices.stop
    if reached != n_devices:
        raise ValueError(f"the ranges cover {reached} devices of {n_devices}")
    nu_stderr = kept.pop("nu_stderr")
    lines = FittedLines(t0_s=DEFAULT_T0_S, status=status, **kept)
    return RunFit(lines, statistics.finish(lines.nu, nu_stderr, status, target_g_us), n_readouts)


def stored_ranges(
    conn: Connection,
    readout_ids: list[int],
    block_starts: list[list[tuple[int, float]]],
    programmed_s: npt.NDArray[np.float64],
    range_devices: int,
) -> Iterator[ReadoutRange]:
    """Every readout walked in step, `range_devices` at a time, each device aged by its
    block's read time − its own programming time. One range of each readout is in memory,
    in two buffers filled again for every range (a range is valid until the next one). Ages
    are float32 (a day in seconds to 1e-7, as the readings): half the traffic of float64."""
    n_devices = programmed_s.size
    width = min(range_devices, n_devices)
    g_us = np.empty((len(readout_ids), width), np.float32)
    ages_s = np.empty((len(readout_ids), width), np.float32)  # differences taken in float64
    walks = [iter_readout_ranges(conn, readout_id, range_devices) for readout_id in readout_ids]
    for start in range(0, n_devices, range_devices):
        stop = min(start + range_devices, n_devices)
        g, ages = g_us[:, : stop - start], ages_s[:, : stop - start]
        for g_row, walk in zip(g, walks, strict=True):
            g_row[:] = next(walk)
        for age_row, starts in zip(ages, block_starts, strict=True):
            age_row[:] = read_times_in_range(starts, start, stop) - programmed_s[start:stop]
        yield ReadoutRange(start, g, ages)


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
