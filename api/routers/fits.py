"""Drift fits: the chip-level summary of a run's per-device fits, and its per-bin statistics."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Db, ReadAccess
from api.pagination import Page, Paging
from api.params import PathId, QueryId
from api.problems import problem_responses
from api.schemas.results import DriftFitBins, DriftFitSummary
from api.views import fit_out, page_of, paging
from hwctl.store import queries

router = APIRouter(prefix="/fits", tags=["fits"])


@router.get("", response_model=Page[DriftFitSummary], dependencies=[ReadAccess])
def list_fits(
    db: Db, page: Paging, experiment_id: QueryId = None, run_id: QueryId = None
) -> Page[DriftFitSummary]:
    listing = queries.list_fits(db, paging(page), experiment_id=experiment_id, run_id=run_id)
    return page_of(listing, page, fit_out)


@router.get(
    "/{fit_id}", response_model=DriftFitSummary, dependencies=[ReadAccess],
    responses=problem_responses(404),
)
def get_fit(fit_id: PathId, db: Db) -> DriftFitSummary:
    return fit_out(queries.get_fit(db, fit_id))


@router.get(
    "/{fit_id}/bins", response_model=DriftFitBins, dependencies=[ReadAccess],
    responses=problem_responses(404),
)
def get_fit_bins(fit_id: PathId, db: Db) -> DriftFitBins:
    """Per target-conductance bin statistics (`ChipStatistics.to_dict()["bins"]`)."""
    return DriftFitBins(id=fit_id, bins=list(queries.fit_bins(db, fit_id)))
