"""A programming run's stored results read in parts, for readers with bounded memory.

`hwctl.analysis.stored.load_experiment` loads a run whole (device map, programming result,
a sample of every readout): 2–3 GB at 43.6 M devices. A reader that draws one plot needs
a part: the run's ids, the stored fit's statistics (JSON, no vectors), the map's placement
(its JSON part) or targets alone (not the addresses a `DeviceMap` rebuilds), some of the
programming result's vectors, and one fit vector range by range (`open_blob`).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, select

from drivers.base import Geometry
from hwctl.mapping import LayerPlacement, placement_from_meta
from hwctl.store.blob_ranges import open_blob
from hwctl.store.engine import BINARY_RESULTS, is_sqlite, let_go_after
from hwctl.store.errors import NotFoundError, StoreError
from hwctl.store.scans import scanning
from hwctl.store.schema import device_fits, mappings, programming_runs, readouts
from hwctl.store.vectors import decode_row, vector_columns


@dataclass(frozen=True)
class RunRef:
    """An experiment's latest finished programming run and its mapping."""

    run_id: int
    mapping_id: int


@dataclass(frozen=True)
class FitHeader:
    """A stored drift fit without its vectors."""

    fit_id: int
    t0_s: float | None
    has_status: bool  # fits stored before revision 0002 have none
    summary: dict[str, Any]
    statistics: dict[str, Any] | None


def latest_run(conn: Connection, experiment_id: int) -> RunRef | None:
    """The run `load_experiment` would show (the experiment's latest finished one), or None."""
    row = conn.execute(
        select(programming_runs.c.id, programming_runs.c.mapping_id)
        .where(programming_runs.c.experiment_id == experiment_id, programming_runs.c.ended_at.is_not(None))
        .order_by(programming_runs.c.id.desc())
        .limit(1)
    ).one_or_none()
    return None if row is None else RunRef(int(row.id), int(row.mapping_id))


def n_readouts(conn: Connection, run_id: int) -> int:
    query = select(readouts.c.id).where(readouts.c.run_id == run_id)
    return len(conn.execute(query).all())


def latest_fit_header(conn: Connection, run_id: int) -> FitHeader | None:
    """The run's latest fit (as `hwctl.store.fits.latest_device_fit` finds it), vectors left out.

    Its columns sit behind the vectors' overflow pages, which SQLite walks to reach them:
    read without the file map (`scanning`), or every page walked stays resident in this
    process (the fit's 13 bytes a device: 0.57 GB at 43.6 M devices)."""
    with scanning(conn):
        return _latest_fit_header(conn, run_id)


def _latest_fit_header(conn: Connection, run_id: int) -> FitHeader | None:
    row = conn.execute(
        select(
            device_fits.c.id,
            device_fits.c.t0_s,
            device_fits.c.status_len.is_not(None).label("has_status"),
            device_fits.c.summary,
            device_fits.c.statistics,
        )
        .where(device_fits.c.run_id == run_id)
        .order_by(device_fits.c.id.desc())
        .limit(1)
    ).one_or_none()
    if row is None:
        return None
    return FitHeader(int(row.id), row.t0_s, bool(row.has_status), dict(row.summary), row.statistics)


def map_placement(conn: Connection, mapping_id: int) -> tuple[Geometry, tuple[LayerPlacement, ...]]:
    """The chip and each layer's placement of a stored device map, read from the map's JSON
    member alone (the .npz's directory and that member: kilobytes of a 174 MB map)."""
    with (
        open_blob(conn, mappings, "device_map", mapping_id) as blob,
        zipfile.ZipFile(blob) as archive,
        archive.open("meta.npy") as member,
    ):
        meta = json.loads(np.lib.format.read_array(member, allow_pickle=False).tobytes().decode())
    return placement_from_meta(meta)


def run_placement(conn: Connection, run_id: int) -> tuple[Geometry, tuple[LayerPlacement, ...]]:
    """`map_placement` of the mapping a programming run was written with."""
    mapping_id = conn.execute(
        select(programming_runs.c.mapping_id).where(programming_runs.c.id == run_id)
    ).scalar()
    if mapping_id is None:
        raise NotFoundError(f"programming run {run_id} does not exist or has no mapping")
    return map_placement(conn, int(mapping_id))


def addresses_in_range(
    geometry: Geometry, layers: tuple[LayerPlacement, ...], start: int, stop: int
) -> npt.NDArray[np.uint32]:
    """Devices `start`…`stop` of the canonical order's addresses, as `DeviceMap.addresses[start:stop]`
    (`hwctl.mapping`: each layer's G+ devices row-major over its matrix, then its G−
    devices, each on the bit line after its G+), computed from the placement alone: a
    reader of a range holds the range, not the chip's 4 bytes a device."""
    out = np.empty(max(stop - start, 0), np.uint32)
    for layer in layers:
        n, cols = layer.n_weights, layer.shape[1]
        for minus, first in ((0, layer.offset), (1, layer.offset + n)):
            lo, hi = max(start, first), min(stop, first + n)
            if lo >= hi:
                continue
            k0, k1 = lo - first, hi - first  # weights of the layer's matrix, row-major
            r0, r1 = k0 // cols, (k1 - 1) // cols + 1
            plus = np.empty((r1 - r0, cols), np.uint32)  # addresses are < 2³² (the protocol's)
            for b in layer.blocks:
                a, z = max(b.row0, r0), min(b.row0 + b.n_rows, r1)
                if a < z:
                    first_word_line = geometry.address(b.tile, b.row + a - b.row0, b.col)
                    word_lines = np.arange(z - a, dtype=np.uint32)[:, None] * np.uint32(geometry.cols)
                    bit_lines = np.arange(0, 2 * b.n_cols, 2, dtype=np.uint32) + np.uint32(first_word_line)
                    np.add(word_lines, bit_lines, out=plus[a - r0 : z - r0, b.col0 : b.col0 + b.n_cols])
            np.add(
                plus.ravel()[k0 - r0 * cols : k1 - r0 * cols],
                np.uint32(minus),
                out=out[lo - start : hi - start],
            )
    return out


def map_targets(conn: Connection, mapping_id: int) -> npt.NDArray[np.float32]:
    """The stored map's target conductances (µS) alone, not the addresses a `DeviceMap`
    rebuilds. SQLite: read from the .npz member into one array through blob I/O (no copy
    of the map's bytes). PostgreSQL: the map is fetched whole (a compressed TOAST value is
    decompressed from its start for every `substring`, so reading most of it in ranges
    would cost quadratic time)."""
    if is_sqlite(conn):
        with open_blob(conn, mappings, "device_map", mapping_id) as blob:
            return _npz_member(blob, "target_g_us.npy")
    data = conn.execute(
        select(mappings.c.device_map).where(mappings.c.id == mapping_id), execution_options=BINARY_RESULTS
    ).scalar()
    if data is None:
        raise NotFoundError(f"mapping {mapping_id} does not exist")
    let_go_after(conn, len(data))
    return _npz_member(io.BytesIO(data), "target_g_us.npy")


def _npz_member(file: BinaryIO, name: str) -> npt.NDArray[np.float32]:
    with zipfile.ZipFile(file) as archive, archive.open(name) as member:
        return np.asarray(np.lib.format.read_array(member, allow_pickle=False), np.float32)


def programming_vectors(conn: Connection, run_id: int, names: tuple[str, ...]) -> dict[str, npt.NDArray[Any]]:
    """Some of a finished run's per-device vectors (`g_final`, `iterations`, `status`,
    `programmed_s`), checksums verified; the others are not read."""
    columns = [c for name in names for c in programming_runs.c if c.name in _group(name)]
    row = conn.execute(
        select(programming_runs.c.ended_at, *columns).where(programming_runs.c.id == run_id),
        execution_options=BINARY_RESULTS,
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"programming run {run_id} does not exist")
    if row.ended_at is None:
        raise StoreError(f"programming run {run_id} has not finished: no per-device results yet")
    vectors = {name: decode_row(row, name, what=f"programming run {run_id} {name}") for name in names}
    let_go_after(conn, sum(v.nbytes for v in vectors.values()))
    return vectors


def _group(name: str) -> set[str]:
    return {c.name for c in vector_columns(name)}
