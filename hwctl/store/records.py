"""The small descriptive rows: stations, networks, mappings, experiments, evaluations,
calibrations. Each `add_*` returns the new row's id; evaluations are also listed here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, insert, select

from drivers.base import Geometry
from hwctl.store.errors import NotFoundError, StoreError
from hwctl.store.schema import (
    calibrations,
    evaluations,
    experiments,
    mappings,
    networks,
    programming_runs,
    readouts,
    stations,
)
from hwctl.store.vectors import StreamedBlob, store_row


@dataclass(frozen=True)
class EvaluationRecord:
    """An accuracy measured from one readout, with when that readout was taken."""

    id: int
    readout_id: int
    run_id: int
    offset_s: float  # the readout's scheduled offset after programming
    board_time_s: float  # when the readout started, station clock
    method: str
    accuracy: float
    ci_low: float | None
    ci_high: float | None
    n_images: int
    settings: dict[str, Any]
    created_at: datetime


def _insert(conn: Connection, table: Table, **values: Any) -> int:
    # Values bound at execution, not built into the statement (see `hwctl.store.vectors.store_row`).
    return int(conn.execute(insert(table).returning(table.c.id), values).scalar_one())


def _insert_with_blob(
    conn: Connection, table: Table, values: dict[str, Any], column: str, blob: bytes
) -> int:
    """A row with one large blob (a checkpoint, a device map), written without copies of it."""
    row_id = store_row(conn, insert(table).returning(table.c.id), table, values, {column: StreamedBlob(blob)})
    assert row_id is not None  # an INSERT returns its row
    return row_id


def add_station(
    conn: Connection,
    name: str,
    *,
    resource: str,
    chip_serial: str,
    geometry: Geometry,
    amplitude_limit_ua: float,
    clock_kind: str = "real",
) -> int:
    return _insert(
        conn, stations, name=name, resource=resource, chip_serial=chip_serial, tiles=geometry.tiles,
        rows=geometry.rows, cols=geometry.cols, amplitude_limit_ua=amplitude_limit_ua, clock_kind=clock_kind,
    )  # fmt: skip


def station_id(conn: Connection, name: str) -> int:
    found = conn.execute(select(stations.c.id).where(stations.c.name == name)).scalar_one_or_none()
    if found is None:
        raise NotFoundError(f"no station named {name!r}")
    return int(found)


def add_network(
    conn: Connection,
    name: str,
    *,
    architecture: str,
    checkpoint: bytes | None = None,
    checkpoint_path: str | None = None,
    sha256: str | None = None,
    meta: dict[str, Any] | None = None,
) -> int:
    """A network from uploaded checkpoint bytes (hashed here) or a path (hash given)."""
    if checkpoint is not None:
        sha256 = hashlib.sha256(checkpoint).hexdigest()
    if sha256 is None or (checkpoint is None and checkpoint_path is None):
        raise StoreError("a network needs checkpoint bytes, or a checkpoint path with its sha256")
    values = {"name": name, "architecture": architecture, "checkpoint_path": checkpoint_path,
              "sha256": sha256, "meta": meta or {}}  # fmt: skip
    if checkpoint is None:
        return _insert(conn, networks, **values, checkpoint=None)
    return _insert_with_blob(conn, networks, values, "checkpoint", checkpoint)


def add_experiment(
    conn: Connection, name: str, *, network_id: int, station_id: int, settings: dict[str, Any]
) -> int:
    return _insert(
        conn, experiments, name=name, network_id=network_id, station_id=station_id, settings=settings
    )


def add_mapping(
    conn: Connection,
    *,
    network_id: int,
    station_id: int,
    device_map: bytes,
    n_devices: int,
    utilisation: float,
    experiment_id: int | None = None,
) -> int:
    """Store a serialized `hwctl.mapping.DeviceMap` (its `to_bytes()`)."""
    values = {"network_id": network_id, "station_id": station_id, "experiment_id": experiment_id,
              "n_devices": n_devices, "utilisation": utilisation}  # fmt: skip
    return _insert_with_blob(conn, mappings, values, "device_map", device_map)


def add_evaluation(
    conn: Connection,
    readout_id: int,
    *,
    method: str,
    accuracy: float,
    n_images: int,
    ci: tuple[float, float] | None = None,
    settings: dict[str, Any] | None = None,
) -> int:
    ci_low, ci_high = ci if ci is not None else (None, None)
    return _insert(
        conn, evaluations, readout_id=readout_id, method=method, accuracy=accuracy, n_images=n_images,
        ci_low=ci_low, ci_high=ci_high, settings=settings or {},
    )  # fmt: skip


def list_evaluations(
    conn: Connection, experiment_id: int, method: str | None = None
) -> list[EvaluationRecord]:
    """An experiment's evaluations in readout time order (then method), of every run."""
    query = (
        select(
            evaluations.c.id, evaluations.c.readout_id, readouts.c.run_id, readouts.c.offset_s,
            readouts.c.board_time_s, evaluations.c.method, evaluations.c.accuracy, evaluations.c.ci_low,
            evaluations.c.ci_high, evaluations.c.n_images, evaluations.c.settings, evaluations.c.created_at,
        )
        .join(readouts, readouts.c.id == evaluations.c.readout_id)
        .join(programming_runs, programming_runs.c.id == readouts.c.run_id)
        .where(programming_runs.c.experiment_id == experiment_id)
        .order_by(readouts.c.board_time_s, evaluations.c.method, evaluations.c.id)
    )  # fmt: skip
    if method is not None:
        query = query.where(evaluations.c.method == method)
    return [EvaluationRecord(**row._asdict()) for row in conn.execute(query)]


def add_calibration(conn: Connection, station_id: int, kind: str, payload: dict[str, Any]) -> int:
    return _insert(conn, calibrations, station_id=station_id, kind=kind, payload=payload)
