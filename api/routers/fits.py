"""Drift fits: the chip-level summary of a run's per-device fits, and its per-bin statistics."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy import Row, select

from api.deps import Db, ReadAccess
from api.lookup import count, one_or_404
from api.pagination import Page, Paging
from api.params import PathId, QueryId
from api.problems import problem_responses
from api.schemas.results import OUTLIERS_LISTED, DriftFitBins, DriftFitSummary, OutlierDevices
from hwctl.store.schema import device_fits, programming_runs

router = APIRouter(prefix="/fits", tags=["fits"])

# Never the vectors: a fit's blobs are megabytes.
_SUMMARY = (
    device_fits.c.id, device_fits.c.run_id, device_fits.c.nu_len.label("n_devices"),
    device_fits.c.summary, device_fits.c.statistics, device_fits.c.created_at,
)


def fit_out(row: Row) -> DriftFitSummary:
    outliers = None
    if row.statistics is not None:
        outliers = {
            kind: OutlierDevices(count=len(devices), first=devices[:OUTLIERS_LISTED])
            for kind, devices in row.statistics["outliers"].items()
        }
    return DriftFitSummary(
        id=row.id, run_id=row.run_id, n_devices=row.n_devices, summary=row.summary, outliers=outliers,
        created_at=row.created_at,
    )


@router.get("", response_model=Page[DriftFitSummary], dependencies=[ReadAccess])
def list_fits(
    db: Db, page: Paging, experiment_id: QueryId = None, run_id: QueryId = None
) -> Page[DriftFitSummary]:
    query = select(*_SUMMARY).order_by(device_fits.c.id)
    if run_id is not None:
        query = query.where(device_fits.c.run_id == run_id)
    if experiment_id is not None:
        query = query.join(programming_runs, programming_runs.c.id == device_fits.c.run_id).where(
            programming_runs.c.experiment_id == experiment_id
        )
    rows = db.execute(query.limit(page.limit).offset(page.offset)).all()
    return Page(items=[fit_out(r) for r in rows], total=count(db, query), limit=page.limit,
                offset=page.offset)


@router.get(
    "/{fit_id}", response_model=DriftFitSummary, dependencies=[ReadAccess],
    responses=problem_responses(404),
)
def get_fit(fit_id: PathId, db: Db) -> DriftFitSummary:
    one_or_404(db, device_fits, fit_id, "drift fit")
    return fit_out(db.execute(select(*_SUMMARY).where(device_fits.c.id == fit_id)).one())


@router.get(
    "/{fit_id}/bins", response_model=DriftFitBins, dependencies=[ReadAccess],
    responses=problem_responses(404),
)
def get_fit_bins(fit_id: PathId, db: Db) -> DriftFitBins:
    """Per target-conductance bin statistics (`ChipStatistics.to_dict()["bins"]`)."""
    row = db.execute(
        select(device_fits.c.summary, device_fits.c.statistics).where(device_fits.c.id == fit_id)
    ).first()
    if row is None:
        raise HTTPException(404, f"drift fit {fit_id} does not exist")
    # Fits stored before the statistics column carried their bins in the summary.
    bins = row.statistics["bins"] if row.statistics is not None else row.summary.get("bins", [])
    return DriftFitBins(id=fit_id, bins=list(bins))
