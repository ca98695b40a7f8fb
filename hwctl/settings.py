"""Service settings, read once from the environment (prefix `HWCTL_`) or a `.env` file.

One place decides where the database lives and who may call the API, so the API, the
workers and the CLI agree on them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./var/hwctl.sqlite"


class Settings(BaseSettings):
    """Deployment settings; every field can be set as `HWCTL_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="HWCTL_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL; the embedded default is a SQLite file relative to the cwd.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description='Keys accepted in the X-API-Key header: "k1,k2" or a JSON list \'["k1", "k2"]\'. '
        "Empty: no auth.",
    )
    api_read_requires_key: bool = Field(
        default=False,
        description="Require X-API-Key on read-only API calls too (mutating calls always need one).",
    )
    max_upload_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="Largest network checkpoint the API accepts, in bytes."
    )
    max_upload_expanded_bytes: int = Field(
        default=256 * 1024 * 1024,
        gt=0,
        description="Largest size an uploaded archive may declare once decompressed, in bytes "
        "(checked before it is loaded).",
    )
    sse_poll_s: float = Field(
        default=0.25, gt=0, description="How often a job's event stream checks the job row."
    )
    sse_keepalive_s: float = Field(
        default=5.0,
        gt=0,
        description="Longest silence on a job's event stream: a comment line is sent after it, so "
        "proxies and clients see a live connection while a job makes no progress.",
    )
    sqlite_busy_timeout_ms: int = Field(
        default=10_000, gt=0, description="How long a SQLite writer waits for the lock before failing."
    )
    job_stale_after_s: float = Field(
        default=60.0, gt=0, description="A running job whose heartbeat is older than this is interrupted."
    )
    link_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Longest silence on a board's link while a reply is due: a dead link is seen within it.",
    )
    reconnect_initial_s: float = Field(
        default=0.5,
        gt=0,
        description="A worker's first wait before re-opening a board whose link failed; "
        "doubled after each failed attempt.",
    )
    reconnect_max_s: float = Field(
        default=30.0, gt=0, description="The longest wait between a worker's attempts to re-open its board."
    )
    link_pause_after_s: float = Field(
        default=300.0,
        gt=0,
        description="How long a board's link may stay down before the station's queue is paused "
        "(link state 'paused'; readbacks that pass their window meanwhile are missed, saying so); "
        "the worker keeps re-opening the board at the longest backoff and resumes by itself.",
    )
    job_max_attempts: int = Field(
        default=5,
        ge=1,
        description="A job fails (and, for programming, its experiment) after this many runs in a "
        "row that a link failure ended without a new checkpoint, or this many runs in all once a "
        "worker crash interrupts it.",
    )
    stop_grace_s: float = Field(
        default=1.5,
        gt=0,
        description="After a stop request, how long a worker lets the command in flight "
        "finish before it aborts the link.",
    )
    db_retry_max_s: float = Field(
        default=5.0,
        gt=0,
        description="The longest wait between a worker's retries of a database write "
        "while the database is unreachable (it retries until it succeeds or is stopped).",
    )
    worker_heartbeat_s: float = Field(
        default=5.0, gt=0, description="How often a worker records that it is alive on its station row."
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_api_keys(cls, value: Any) -> Any:
        """The environment gives one string: a JSON list if it looks like one, else comma-separated."""
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [key.strip() for key in value.split(",") if key.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached: the environment is read once)."""
    return Settings()
