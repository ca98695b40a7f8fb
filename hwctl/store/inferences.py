"""Inference jobs' rows: what was asked (data set, readout or a fresh read, settings), and
once done the logits of every (method, repeat, image, class) as one float32 vector with a
JSON summary (accuracy, confusion, the readouts used and their age).

Also the questions the API asks before queuing one: is this readout the experiment's,
which programming run does the experiment's chip hold, may its chip be read now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Row, func, insert, select, update

from hwctl.store.engine import BINARY_RESULTS
from hwctl.store.errors import NotFoundError, StoreError
from hwctl.store.readouts import load_programming_result
from hwctl.store.schema import experiments, inferences, jobs, mappings, networks, programming_runs, readouts
from hwctl.store.vectors import decode_row, encode
from hwctl.vocabulary import ExperimentStatus


class ChipNotHeldError(StoreError):
    """The experiment's network is not what its station's chip holds now (nothing to read)."""


@dataclass(frozen=True)
class InferenceRecord:
    """An inference as stored, without its logits."""

    id: int
    experiment_id: int
    dataset_id: int
    readout_id: int | None
    job_id: int | None
    settings: dict[str, Any]
    summary: dict[str, Any] | None
    logits_shape: list[int] | None
    created_at: datetime


_COLUMNS = (
    inferences.c.id, inferences.c.experiment_id, inferences.c.dataset_id, inferences.c.readout_id,
    inferences.c.job_id, inferences.c.settings, inferences.c.summary, inferences.c.logits_shape,
    inferences.c.created_at,
)  # fmt: skip


def add_inference(
    conn: Connection, experiment_id: int, dataset_id: int, readout_id: int | None, settings: dict[str, Any]
) -> int:
    """A queued inference (`readout_id` None: a fresh read of the chip)."""
    values = {"experiment_id": experiment_id, "dataset_id": dataset_id, "readout_id": readout_id,
              "settings": settings}  # fmt: skip
    return int(conn.execute(insert(inferences).returning(inferences.c.id), values).scalar_one())


def set_job(conn: Connection, inference_id: int, job_id: int) -> None:
    conn.execute(update(inferences).where(inferences.c.id == inference_id).values(job_id=job_id))


def get_inference(conn: Connection, inference_id: int) -> InferenceRecord:
    row = conn.execute(select(*_COLUMNS).where(inferences.c.id == inference_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"inference {inference_id} does not exist")
    return InferenceRecord(**row._asdict())


def list_inferences(
    conn: Connection, experiment_id: int, limit: int, offset: int
) -> tuple[list[InferenceRecord], int]:
    mine = inferences.c.experiment_id == experiment_id
    total = int(conn.execute(select(func.count()).select_from(inferences).where(mine)).scalar_one())
    rows = conn.execute(select(*_COLUMNS).where(mine).order_by(inferences.c.id).limit(limit).offset(offset))
    return [InferenceRecord(**r._asdict()) for r in rows], total


def store_results(
    conn: Connection,
    inference_id: int,
    logits: npt.NDArray[np.float32],
    summary: dict[str, Any],
    readout_id: int | None = None,
) -> None:
    """The finished inference: logits shaped (methods, repeats, images, classes) and its summary."""
    values: dict[str, Any] = {"summary": summary, "logits_shape": list(logits.shape),
                              **encode(logits, "float32").columns("logits")}  # fmt: skip
    if readout_id is not None:
        values["readout_id"] = readout_id
    conn.execute(update(inferences).where(inferences.c.id == inference_id), values)


def load_logits(conn: Connection, inference_id: int) -> npt.NDArray[np.float32] | None:
    """(methods, repeats, images, classes) float32, or None before the job has finished."""
    query = select(inferences).where(inferences.c.id == inference_id)
    row = conn.execute(query, execution_options=BINARY_RESULTS).one_or_none()
    if row is None:
        raise NotFoundError(f"inference {inference_id} does not exist")
    if row.logits_blob is None:
        return None
    flat = decode_row(row, "logits", what=f"inference {inference_id} logits")
    return flat.reshape(row.logits_shape)


# -- what the API checks before queuing ------------------------------------------------------
@dataclass(frozen=True)
class RunAtReadout:
    """A stored readout of the experiment, with its programming run."""

    readout_id: int
    run_id: int


def experiment_readout(conn: Connection, experiment_id: int, readout_id: int) -> RunAtReadout:
    """The readout if it belongs to the experiment; NotFoundError (naming both) otherwise."""
    row = conn.execute(
        select(readouts.c.id, readouts.c.run_id, programming_runs.c.experiment_id)
        .join(programming_runs, programming_runs.c.id == readouts.c.run_id)
        .where(readouts.c.id == readout_id)
    ).one_or_none()
    if row is None or row.experiment_id != experiment_id:
        raise NotFoundError(f"readout {readout_id} is not a readout of experiment {experiment_id}; "
                            f"GET /readouts?experiment_id={experiment_id} lists them")  # fmt: skip
    return RunAtReadout(int(row.id), int(row.run_id))


def experiment_readouts_between(
    conn: Connection, experiment_id: int, first_id: int, last_id: int
) -> list[int]:
    """The experiment's readout ids from `first_id` to `last_id` (inclusive), in order."""
    rows = conn.execute(
        select(readouts.c.id)
        .join(programming_runs, programming_runs.c.id == readouts.c.run_id)
        .where(programming_runs.c.experiment_id == experiment_id, readouts.c.id.between(first_id, last_id))
        .order_by(readouts.c.id)
    )
    return [int(r.id) for r in rows]


@dataclass(frozen=True)
class SeriesPoint:
    """One accuracy of a re-evaluation series: an inference at a stored readout."""

    series: str
    readout_id: int
    t_since_program_s: float
    method: str
    accuracy_pct: float
    inference_id: int


def series_names(conn: Connection, experiment_id: int) -> set[str]:
    """The re-evaluation series of the experiment, finished or not."""
    rows = conn.execute(select(inferences.c.settings).where(inferences.c.experiment_id == experiment_id))
    return {r.settings["series"] for r in rows if r.settings.get("series") is not None}


def series_points(conn: Connection, experiment_id: int) -> list[SeriesPoint]:
    """Every finished re-evaluation of the experiment, per method (first repeat), by readout."""
    rows = conn.execute(
        select(inferences.c.id, inferences.c.readout_id, inferences.c.settings, inferences.c.summary)
        .where(inferences.c.experiment_id == experiment_id, inferences.c.summary.is_not(None))
        .order_by(inferences.c.readout_id, inferences.c.id)
    )
    points = []
    for row in rows:
        series, summary = row.settings.get("series"), row.summary
        if series is None or row.readout_id is None or not summary.get("readouts"):
            continue
        age_s, readout_id = float(summary["readouts"][0]["t_since_program_s"]), int(row.readout_id)
        points += [
            SeriesPoint(series, readout_id, age_s, r["method"], float(r["accuracy_pct"]), int(row.id))
            for r in summary["results"] if r["repeat"] == 0 and r.get("accuracy_pct") is not None
        ]  # fmt: skip
    return points


def latest_run(conn: Connection, experiment_id: int) -> int | None:
    """The experiment's last finished programming run, if any."""
    found = conn.execute(
        select(programming_runs.c.id)
        .where(programming_runs.c.experiment_id == experiment_id, programming_runs.c.ended_at.is_not(None))
        .order_by(programming_runs.c.id.desc())
        .limit(1)
    ).scalar()
    return None if found is None else int(found)


def run_held_on_chip(conn: Connection, experiment_id: int) -> int:
    """The run whose devices the experiment's station holds now, or ChipNotHeldError saying why.

    Every mapping starts at tile 0, so the station's chip holds the last programming run
    started on it: it must be this experiment's, finished, and its board not suspect.
    """
    experiment = conn.execute(
        select(experiments.c.station_id, experiments.c.status).where(experiments.c.id == experiment_id)
    ).one_or_none()
    if experiment is None:
        raise NotFoundError(f"experiment {experiment_id} does not exist")
    if experiment.status in (ExperimentStatus.FAILED, ExperimentStatus.BOARD_STATE_LOST):
        raise ChipNotHeldError(f"experiment {experiment_id} is {experiment.status}: its chip's state is "
                               "not known; infer at a stored readout instead")  # fmt: skip
    last = conn.execute(
        select(programming_runs.c.id, programming_runs.c.experiment_id, programming_runs.c.ended_at)
        .join(mappings, mappings.c.id == programming_runs.c.mapping_id)
        .where(mappings.c.station_id == experiment.station_id)
        .order_by(programming_runs.c.id.desc())
        .limit(1)
    ).one_or_none()
    if last is None or last.experiment_id != experiment_id:
        raise ChipNotHeldError(
            f"experiment {experiment_id} is not programmed on its station's chip "
            + ("yet" if last is None else f"(experiment {last.experiment_id} was programmed after it)")
            + "; infer at a stored readout instead"
        )
    if last.ended_at is None:
        raise ChipNotHeldError(f"experiment {experiment_id} is still being programmed; "
                               "try again when it reads")  # fmt: skip
    return int(last.id)


def run_programmed_end_s(conn: Connection, run_id: int) -> float:
    """When the run's last device was programmed (board s): a readout's age counts from it."""
    return float(load_programming_result(conn, run_id).programmed_s.max(initial=0.0))


def free_offset_s(conn: Connection, run_id: int, offset_s: float) -> float:
    """`offset_s`, or the next float above it not yet taken by a readout of the run
    (a virtual clock does not move between two reads at the same board time)."""
    later = select(readouts.c.offset_s).where(readouts.c.run_id == run_id, readouts.c.offset_s >= offset_s)
    taken = set(conn.execute(later).scalars())
    while offset_s in taken:
        offset_s = float(np.nextafter(offset_s, np.inf))
    return offset_s


@dataclass(frozen=True)
class ExperimentTarget:
    """What an inference of the experiment runs on: its station and its network."""

    experiment_id: int
    station_id: int
    network_id: int
    architecture: str


def experiment_target(conn: Connection, experiment_id: int) -> ExperimentTarget:
    row = conn.execute(
        select(experiments.c.id, experiments.c.station_id, experiments.c.network_id, networks.c.architecture)
        .join(networks, networks.c.id == experiments.c.network_id)
        .where(experiments.c.id == experiment_id)
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"experiment {experiment_id} does not exist")
    return ExperimentTarget(int(row.id), int(row.station_id), int(row.network_id), str(row.architecture))


def job_status(conn: Connection, job_id: int | None) -> str | None:
    if job_id is None:
        return None
    status = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
    return None if status is None else str(status)


def inference_for_job(conn: Connection, job_id: int) -> int | None:
    found = conn.execute(select(inferences.c.id).where(inferences.c.job_id == job_id)).scalar()
    return None if found is None else int(found)


def job_row(conn: Connection, job_id: int) -> Row[Any]:
    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"job {job_id} does not exist")
    return row
