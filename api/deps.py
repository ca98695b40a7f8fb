"""Request dependencies: settings, a DB session per request, and API-key checks.

The app keeps its settings and engine on `app.state`, so tests and the embedded
server build independent apps in one process.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy import Connection, Engine

from hwctl.settings import Settings

API_KEY_HEADER = "X-API-Key"
_api_key = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="a key from HWCTL_API_KEYS")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> Engine:
    """For calls that manage their own transactions (the job queue, event streams)."""
    engine: Engine = request.app.state.engine
    return engine


def get_connection(request: Request) -> Iterator[Connection]:
    """One connection per request; a handler commits what it writes, the rest rolls back."""
    with get_engine(request).connect() as connection:
        yield connection


SettingsDep = Annotated[Settings, Depends(get_settings)]
Db = Annotated[Connection, Depends(get_connection)]
EngineDep = Annotated[Engine, Depends(get_engine)]


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


def require_write_key(settings: SettingsDep, key: Annotated[str | None, Security(_api_key)]) -> None:
    """Every mutating call needs a valid key."""
    _check_key(key, settings)


def require_read_key(settings: SettingsDep, key: Annotated[str | None, Security(_api_key)]) -> None:
    """Read-only calls need a key only when the settings say so."""
    if settings.api_read_requires_key:
        _check_key(key, settings)


WriteAccess = Depends(require_write_key)
ReadAccess = Depends(require_read_key)
