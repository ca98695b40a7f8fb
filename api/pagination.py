"""Limit/offset pagination: every list endpoint returns a `Page` with the total count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel, Field

from api.params import MAX_ROW_ID

T = TypeVar("T")
MAX_PAGE = 500


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="rows matching the filters, across all pages")
    limit: int
    offset: int


@dataclass(frozen=True)
class PageParams:
    limit: int
    offset: int


def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="rows per page")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID, description="rows to skip")] = 0,
) -> PageParams:
    return PageParams(limit, offset)


Paging = Annotated[PageParams, Depends(page_params)]
