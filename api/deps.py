"""Request dependencies: settings, a DB session per request, and API-key checks.

Those that never block are `async def`: FastAPI runs a plain `def` dependency in its
threadpool, a thread hop per dependency per request.

The app keeps its settings and engine on `app.state`, so tests and the embedded
server build independent apps in one process.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy import Connection, Engine

from api.group_commit import GroupCommit
from hwctl.settings import Settings
from hwctl.store.engine import SQLITE_BEGIN_OPTION, is_sqlite

API_KEY_HEADER = "X-API-Key"
_api_key = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="a key from HWCTL_API_KEYS")


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_engine(request: Request) -> Engine:
    """For calls that manage their own transactions (the job queue, event streams)."""
    return _engine(request)


def get_connection(request: Request) -> Iterator[Connection]:
    """One connection per request; a handler commits what it writes, the rest rolls back."""
    with _engine(request).connect() as connection:
        yield connection


class Writes:
    """Write transactions that take the database's write lock up front, one at a time.

    SQLite admits one writer. A deferred transaction that reads then writes fails at once
    with "database is locked" when another writer commits in between (WAL snapshot), and
    its busy handler makes waiting writers sleep and retry, which under load is unfair
    and gives second-long tails. So: BEGIN IMMEDIATE, and this process's writers queue on
    a lock in arrival order. On PostgreSQL the lock is a no-op. Frequent small writes
    (submissions) go through `group`, which shares one commit among concurrent ones.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.serialized: AbstractContextManager[object] = (
            threading.RLock() if is_sqlite(engine) else nullcontext()
        )  # reentrant: a handler may hold it around several transactions
        self.group = GroupCommit(engine, self.serialized)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.serialized, self.engine.connect() as connection:
            connection.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            with connection.begin():
                yield connection


async def get_writes(request: Request) -> Writes:
    writes: Writes = request.app.state.writes
    return writes


SettingsDep = Annotated[Settings, Depends(get_settings)]
Db = Annotated[Connection, Depends(get_connection)]
EngineDep = Annotated[Engine, Depends(get_engine)]
WritesDep = Annotated[Writes, Depends(get_writes)]


def _check_key(presented: str | None, settings: Settings) -> None:
    if not settings.api_keys:
        return  # no keys configured: authentication is off (a local, single-user install)
    if not presented:
        raise HTTPException(
            401, f"missing API key: send it in the {API_KEY_HEADER} header",
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )
    if not any(secrets.compare_digest(presented, key) for key in settings.api_keys):
        raise HTTPException(403, f"the {API_KEY_HEADER} presented is not a valid API key")


async def require_write_key(settings: SettingsDep, key: Annotated[str | None, Security(_api_key)]) -> None:
    """Every mutating call needs a valid key."""
    _check_key(key, settings)


async def require_read_key(settings: SettingsDep, key: Annotated[str | None, Security(_api_key)]) -> None:
    """Read-only calls need a key only when the settings say so."""
    if settings.api_read_requires_key:
        _check_key(key, settings)


WriteAccess = Depends(require_write_key)
ReadAccess = Depends(require_read_key)
