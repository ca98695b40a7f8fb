"""Evaluations: the accuracy measured from each readout, per compensation method."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from sqlalchemy import Row, Select, select

from api.deps import Db, ReadAccess
from api.lookup import count
from api.pagination import Page, Paging
from api.params import PathId, QueryId
from api.problems import problem_responses
from api.schemas.results import Evaluation
from hwctl.store.schema import evaluations, programming_runs, readouts

router = APIRouter(prefix="/evaluations", tags=["evaluations"])


def evaluation_out(row: Row) -> Evaluation:
    return Evaluation.model_validate(row, from_attributes=True)


def evaluations_query(
    experiment_id: int | None = None, method: Literal["none", "gdc", "adabs"] | None = None
) -> Select[Any]:
    """Evaluations with their readout's offset, in time order, optionally of one experiment."""
    query = (
        select(evaluations, readouts.c.offset_s)
        .join(readouts, readouts.c.id == evaluations.c.readout_id)
        .order_by(readouts.c.offset_s, evaluations.c.method, evaluations.c.id)
    )
    if experiment_id is not None:
        query = query.join(programming_runs, programming_runs.c.id == readouts.c.run_id).where(
            programming_runs.c.experiment_id == experiment_id
        )
    if method is not None:
        query = query.where(evaluations.c.method == method)
    return query


@router.get("", response_model=Page[Evaluation], dependencies=[ReadAccess])
def list_evaluations(
    db: Db, page: Paging, experiment_id: QueryId = None,
    method: Literal["none", "gdc", "adabs"] | None = None,
) -> Page[Evaluation]:
    query = evaluations_query(experiment_id, method)
    rows = db.execute(query.limit(page.limit).offset(page.offset)).all()
    return Page(items=[evaluation_out(r) for r in rows], total=count(db, query), limit=page.limit,
                offset=page.offset)


@router.get(
    "/{evaluation_id}", response_model=Evaluation, dependencies=[ReadAccess],
    responses=problem_responses(404),
)
def get_evaluation(evaluation_id: PathId, db: Db) -> Evaluation:
    row = db.execute(evaluations_query().where(evaluations.c.id == evaluation_id)).first()
    if row is None:
        raise HTTPException(404, f"evaluation {evaluation_id} does not exist")
    return evaluation_out(row)
