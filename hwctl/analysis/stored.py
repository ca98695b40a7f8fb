"""One experiment as the store holds it, for analysis and reports.

Reads what the station worker wrote (`hwctl.jobs`): the experiment and its
specification, the network, the station's chip geometry, the latest finished
programming run with its device map, every readout of that run without its vector
(readers stream those from the store: `hwctl.store.readouts.iter_readout_ranges`), a
sample of each readout's conductances for histograms (`HISTOGRAM_SAMPLE_DEVICES`), and
the accuracy of every programming run of the experiment per time and method, with its
spread over read draws and programmings (`hwctl.analysis.spread`). Times are seconds
since programming on the station clock: each device's own age (its block's read time −
`programmed_s[device]`) for drift fits, and the readout's mean device read time since
the end of programming for accuracy points. On an accelerated clock one readout spans
hours of board time, so its first block's time (`board_time_s`) would age every later
block wrongly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine, select

from drivers.base import Geometry
from hwctl.analysis.spread import AccuracyRead, AccuracyRecord, summarise
from hwctl.experiment_spec import ExperimentSpec
from hwctl.mapping import DeviceMap
from hwctl.store.errors import NotFoundError
from hwctl.store.queries import experiment_accuracy_reads
from hwctl.store.readouts import (
    ProgrammingResult,
    ReadoutInfo,
    block_starts_of,
    list_readouts,
    load_programming_result,
    read_block_starts,
    read_times_in_range,
    readout_sample_us,
)
from hwctl.store.schema import experiments, mappings, networks, programming_runs, stations

# Up to this many devices of each readout are loaded for histograms: every device of a
# chip this size or smaller, else whole stored blocks spread evenly over the chip.
HISTOGRAM_SAMPLE_DEVICES = 1 << 20


class NotReadyError(NotFoundError):
    """The experiment exists but has not produced what was asked for yet (e.g. no readouts)."""


@dataclass(frozen=True)
class StoredExperiment:
    """An experiment's rows; `run_id` and everything after it are None before programming ends."""

    experiment_id: int
    name: str
    status: str
    created_at: datetime
    spec: ExperimentSpec
    network_name: str
    architecture: str
    station_name: str
    geometry: Geometry
    run_id: int | None
    device_map: DeviceMap | None
    programming: ProgrammingResult | None
    readouts: list[ReadoutInfo]  # without their vectors
    g_samples_us: list[npt.NDArray[np.float32]]  # per readout: ≤ HISTOGRAM_SAMPLE_DEVICES conductances
    block_starts: list[list[tuple[int, float]]]  # per readout: (first device, board s) of each read block
    measured: list[AccuracyRecord]  # kind="measured", every run's, per time and method, ordered so

    @property
    def programmed_end_s(self) -> float:
        """Board time at which the last device was programmed."""
        if self.programming is None or self.programming.programmed_s.size == 0:
            raise NotReadyError(f"experiment {self.experiment_id} has no finished programming run")
        return float(self.programming.programmed_s.max())

    def require_readouts(self, at_least: int = 1) -> tuple[DeviceMap, ProgrammingResult]:
        """The device map and programming result, once `at_least` readouts exist."""
        if self.device_map is None or self.programming is None or len(self.readouts) < at_least:
            raise NotReadyError(
                f"experiment {self.experiment_id} ({self.status}) has {len(self.readouts)} readouts; "
                f"this needs at least {at_least}"
            )
        return self.device_map, self.programming

    def device_ages_s(self, start: int = 0, stop: int | None = None) -> npt.NDArray[np.float64]:
        """Each device's time since its own programming at each readout, (n_readouts, n_devices),
        for devices `start`…`stop` − 1 (default: all; 8 bytes a device per readout)."""
        _, programming = self.require_readouts()
        stop = programming.programmed_s.size if stop is None else stop
        ages_s = np.empty((len(self.block_starts), stop - start), np.float64)
        for row, starts in zip(ages_s, self.block_starts, strict=True):
            row[:] = read_times_in_range(starts, start, stop)
            row -= programming.programmed_s[start:stop]
        return ages_s


@contextmanager
def open_connection(db: Engine | Connection) -> Iterator[Connection]:
    """`db` itself if it is a connection (the caller's transaction), else a new one."""
    if isinstance(db, Connection):
        yield db
    else:
        with db.connect() as conn:
            yield conn


def load_experiment(db: Engine | Connection, experiment_id: int, *, vectors: bool = True) -> StoredExperiment:
    """Everything stored about `experiment_id`; `NotFoundError` if there is no such experiment.

    `vectors=False` leaves out the run's device map, programming result, readout samples
    and block starts (None and empty: GB at 43.6 M devices), for readers of the rest.
    """
    with open_connection(db) as conn:
        row = conn.execute(
            select(
                experiments,
                networks.c.name.label("network_name"),
                networks.c.architecture,
                stations.c.name.label("station_name"),
                stations.c.tiles,
                stations.c.rows,
                stations.c.cols,
            )
            .join(networks, networks.c.id == experiments.c.network_id)
            .join(stations, stations.c.id == experiments.c.station_id)
            .where(experiments.c.id == experiment_id)
        ).one_or_none()
        if row is None:
            raise NotFoundError(f"experiment {experiment_id} does not exist")
        run = conn.execute(
            select(programming_runs.c.id, *([mappings.c.device_map] if vectors else []))
            .join(mappings, mappings.c.id == programming_runs.c.mapping_id)
            .where(
                programming_runs.c.experiment_id == experiment_id, programming_runs.c.ended_at.is_not(None)
            )
            .order_by(programming_runs.c.id.desc())
            .limit(1)
        ).one_or_none()
        run_id = None if run is None else int(run.id)
        device_map = None if run is None or not vectors else DeviceMap.from_bytes(run.device_map)
        programming = (
            None if run_id is None or not vectors else load_programming_result(conn, run_id, device_map)
        )
        stored = [] if run_id is None else list_readouts(conn, run_id)
        block_starts = [read_block_starts(conn, r.id)[0] for r in stored] if vectors else []
        samples = [readout_sample_us(conn, r.id, HISTOGRAM_SAMPLE_DEVICES) for r in stored] if vectors else []
        measured = measured_accuracy(conn, experiment_id)
    return StoredExperiment(
        experiment_id=experiment_id,
        name=row.name,
        status=row.status,
        created_at=row.created_at,
        spec=ExperimentSpec.model_validate(row.settings),
        network_name=row.network_name,
        architecture=row.architecture,
        station_name=row.station_name,
        geometry=Geometry(row.tiles, row.rows, row.cols),
        run_id=run_id,
        device_map=device_map,
        programming=programming,
        readouts=stored,
        g_samples_us=samples,
        block_starts=block_starts,
        measured=measured,
    )


def _mean_read_s(starts: list[tuple[int, float]], n_devices: int) -> float:
    """The mean over devices of their read time: each block's start weighted by its size."""
    firsts = [first for first, _ in starts] + [n_devices]
    sizes = np.diff(firsts)
    return float(np.dot(sizes, [t_s for _, t_s in starts]) / max(n_devices, 1))


def measured_accuracy(conn: Connection, experiment_id: int) -> list[AccuracyRecord]:
    """The accuracy of every finished programming run of the experiment per scheduled offset
    and method: mean, spread over read draws and over programmings (`spread.summarise`).

    A read's time is its mean device read time since its run's programming ended; that end
    is the readout's scheduled time − its offset (readbacks are scheduled from it), so no
    run's per-device vectors are loaded.
    """
    reads = []
    for r in experiment_accuracy_reads(conn, experiment_id):
        programmed_end_s = r.scheduled_s - r.offset_s
        t_s = _mean_read_s(block_starts_of(r), r.g_len) - programmed_end_s
        record = AccuracyRecord(
            "measured", t_s, r.method, float(r.accuracy), r.ci_low, r.ci_high, int(r.n_images)
        )
        reads.append(AccuracyRead(int(r.run_id), float(r.offset_s), int(r.draw), record))
    return summarise(reads)
