"""Fetch one row or answer 404 with a message that names what was missing."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from sqlalchemy import Connection, Row, Select, Table, func, select


def one_or_404(db: Connection, table: Table, row_id: int, what: str) -> Row:
    row = db.execute(select(table).where(table.c.id == row_id)).first()
    if row is None:
        raise HTTPException(404, f"{what} {row_id} does not exist")
    return row


def count(db: Connection, query: Select[Any]) -> int:
    """Rows `query` would return, before any limit/offset."""
    return int(db.execute(select(func.count()).select_from(query.order_by(None).subquery())).scalar_one())
