"""Bounded integer parameters: ids and counts that both databases can hold.

Unbounded ints from a URL would overflow SQLite's 64-bit and PostgreSQL's 32-bit
INTEGER inside the driver (a 500); bounding them here makes that a 422 that says why.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

MAX_ROW_ID = 2**31 - 1  # the id columns are INTEGER: 32-bit on PostgreSQL

PathId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
QueryId = Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)]
