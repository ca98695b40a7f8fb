"""Evaluations: the accuracy measured from each readout, per compensation method."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Db, ReadAccess
from api.pagination import Page, Paging
from api.params import PathId, QueryId
from api.problems import problem_responses
from api.schemas.results import Evaluation
from api.views import evaluation_out, page_of, paging
from hwctl.store import queries
from hwctl.vocabulary import CompensationMethod

router = APIRouter(prefix="/evaluations", tags=["evaluations"])


@router.get("", response_model=Page[Evaluation], dependencies=[ReadAccess])
def list_evaluations(
    db: Db, page: Paging, experiment_id: QueryId = None, method: CompensationMethod | None = None
) -> Page[Evaluation]:
    """Evaluations with their readout's offset, in time order."""
    listing = queries.list_evaluations(db, paging(page), experiment_id=experiment_id, method=method)
    return page_of(listing, page, evaluation_out)


@router.get(
    "/{evaluation_id}", response_model=Evaluation, dependencies=[ReadAccess],
    responses=problem_responses(404),
)
def get_evaluation(evaluation_id: PathId, db: Db) -> Evaluation:
    return evaluation_out(queries.get_evaluation(db, evaluation_id))
