"""Per-device drift fits of a programming run: ν, G(t0), R² and fit status as blobs.

`FittedLines` is what a fit holds per device (~10⁶ values each) and what is stored;
`hwctl.analysis.drift.fit_drift` computes it (with its uncertainties, which are not
stored). The store defines the type so that it never imports the analysis. Like
readouts the vectors are stored in the run's canonical device order, with a small
chip-level summary (computed here, so every fit has the same one) and the per-bin
statistics of `hwctl.analysis.statistics.ChipStatistics.to_dict()` as JSON. A run may
be fitted more than once (more readouts, other settings); the latest fit is the current one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Row, insert, select

from hwctl.store.engine import BINARY_RESULTS, let_go_after
from hwctl.store.errors import NotFoundError, StoreError
from hwctl.store.schema import device_fits
from hwctl.store.vectors import StreamedVector, decode_row, store_row

Floats32 = npt.NDArray[np.float32]
Floats = npt.NDArray[np.floating[Any]]


class FitStatus(IntEnum):
    """Why a device has (or lacks) a drift exponent; stored per device as int8."""

    OK = 0
    NO_SIGNAL = 1  # every reading ≤ 0: a RESET or dead device; ν is undefined
    TOO_FEW_POINTS = 2  # fewer positive readings than the fit's minimum
    NO_TIME_SPREAD = 3  # all usable readings at the same time; no slope to fit


@dataclass(frozen=True)
class FittedLines:
    """Each device's line ln G = ln G(t0) − ν·ln(t/t0); NaN wherever `status != FitStatus.OK`."""

    t0_s: float
    nu: Floats  # drift exponent (positive = conductance decays)
    g_t0_us: Floats  # fitted conductance at t0
    r_squared: Floats  # of the log-log line; NaN when the reads are constant
    status: npt.NDArray[np.int8]

    @property
    def ok(self) -> npt.NDArray[np.bool_]:
        return self.status == FitStatus.OK

    @property
    def n_devices(self) -> int:
        return int(self.nu.size)


@dataclass(frozen=True)
class StoredDeviceFit:
    """A stored fit; `status` and `t0_s` are None for fits stored before revision 0002."""

    id: int
    run_id: int
    created_at: datetime
    t0_s: float | None
    nu: Floats32
    g_t0_us: Floats32
    r_squared: Floats32
    status: npt.NDArray[np.int8] | None
    summary: dict[str, Any]
    statistics: dict[str, Any] | None

    @property
    def n_devices(self) -> int:
        return int(self.nu.size)

    @property
    def ok(self) -> npt.NDArray[np.bool_]:
        """Devices with a drift exponent (where `status` is unknown: where ν is finite)."""
        return np.isfinite(self.nu) if self.status is None else self.status == FitStatus.OK

    @property
    def bins(self) -> list[dict[str, Any]]:
        """Per target-conductance bin statistics, [] when none were stored."""
        return list((self.statistics or {}).get("bins", []))

    @property
    def lines(self) -> FittedLines | None:
        """The stored per-device lines; None for a fit stored before revision 0002 (no status, no t0)."""
        if self.status is None or self.t0_s is None:
            return None
        return FittedLines(self.t0_s, self.nu, self.g_t0_us, self.r_squared, self.status)


def fit_summary(fit: FittedLines) -> dict[str, Any]:
    """Chip-level numbers of a fit: how many devices have a ν, and its distribution."""
    nu = fit.nu[fit.ok]
    counts = np.bincount(fit.status.astype(np.int64), minlength=len(FitStatus))

    def stat(value: float) -> float | None:
        return None if not math.isfinite(value) else round(float(value), 6)

    return {
        "t0_s": fit.t0_s,
        "n_devices": fit.n_devices,
        "n_fitted": int(nu.size),
        "status_counts": {s.name.lower(): int(counts[s]) for s in FitStatus},
        "nu_mean": stat(float(nu.mean())) if nu.size else None,
        "nu_median": stat(float(np.median(nu))) if nu.size else None,
        "nu_std": stat(float(nu.std())) if nu.size else None,
        "r2_median": stat(float(np.nanmedian(fit.r_squared[fit.ok]))) if nu.size else None,
    }


def save_device_fit(
    conn: Connection,
    run_id: int,
    fit: FittedLines,
    *,
    statistics: Mapping[str, Any] | None = None,
    extra_summary: Mapping[str, Any] | None = None,
) -> int:
    """Store `fit` of run `run_id` (statistics: `ChipStatistics.to_dict()`); returns its id.

    `extra_summary` adds caller context (e.g. `n_readouts`) to `fit_summary(fit)`.
    """
    clash = set(extra_summary or {}) & set(summary := fit_summary(fit))
    if clash:
        raise StoreError(f"extra summary keys {sorted(clash)} would overwrite the fit's own")
    values = {
        "run_id": run_id,
        "t0_s": fit.t0_s,
        "summary": {**summary, **(extra_summary or {})},
        "statistics": dict(statistics) if statistics is not None else None,
    }
    vectors = {
        "nu": StreamedVector(fit.nu, "float32"),
        "g_t0": StreamedVector(fit.g_t0_us, "float32"),
        "r2": StreamedVector(fit.r_squared, "float32"),
        "status": StreamedVector(fit.status, "int8"),
    }
    fit_id = store_row(conn, insert(device_fits).returning(device_fits.c.id), device_fits, values, vectors)
    assert fit_id is not None  # an INSERT returns its row
    return fit_id


def load_device_fit(conn: Connection, fit_id: int) -> StoredDeviceFit:
    """The fit with every vector, lengths and checksums verified."""
    query = select(device_fits).where(device_fits.c.id == fit_id)
    row = conn.execute(query, execution_options=BINARY_RESULTS).one_or_none()
    if row is None:
        raise NotFoundError(f"drift fit {fit_id} does not exist")
    return _stored(row, conn)


def latest_device_fit(conn: Connection, run_id: int) -> StoredDeviceFit:
    """The run's most recent fit; `NotFoundError` if the run has not been fitted."""
    query = select(device_fits).where(device_fits.c.run_id == run_id).order_by(device_fits.c.id.desc())
    row = conn.execute(query.limit(1), execution_options=BINARY_RESULTS).one_or_none()
    if row is None:
        raise NotFoundError(f"programming run {run_id} has no drift fit")
    return _stored(row, conn)


def latest_fit_summary(conn: Connection, run_id: int) -> tuple[int, dict[str, Any]] | None:
    """The id and summary of the run's most recent fit, without its vectors; None if unfitted."""
    query = select(device_fits.c.id, device_fits.c.summary).where(device_fits.c.run_id == run_id)
    row = conn.execute(query.order_by(device_fits.c.id.desc()).limit(1)).one_or_none()
    return None if row is None else (int(row.id), dict(row.summary or {}))


def _stored(row: Row[Any], conn: Connection) -> StoredDeviceFit:
    let_go_after(
        conn, sum(len(getattr(row, f"{name}_blob") or b"") for name in ("nu", "g_t0", "r2", "status"))
    )
    what = f"drift fit {row.id}"
    return StoredDeviceFit(
        id=row.id, run_id=row.run_id, created_at=row.created_at, t0_s=row.t0_s,
        nu=decode_row(row, "nu", what=f"{what} nu"),
        g_t0_us=decode_row(row, "g_t0", what=f"{what} g_t0"),
        r_squared=decode_row(row, "r2", what=f"{what} r2"),
        status=None if row.status_blob is None else decode_row(row, "status", what=f"{what} status"),
        summary=dict(row.summary), statistics=row.statistics,
    )  # fmt: skip
