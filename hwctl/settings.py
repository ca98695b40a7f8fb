"""Service settings, read once from the environment (prefix `HWCTL_`) or a `.env` file.

One place decides where the database lives and who may call the API, so the API, the
workers and the CLI agree on them.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./var/hwctl.sqlite"


class Settings(BaseSettings):
    """Deployment settings; every field can be set as `HWCTL_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="HWCTL_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL; the embedded default is a SQLite file relative to the cwd.",
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description='Keys accepted in the X-API-Key header, as JSON: \'["k1", "k2"]\'. Empty: no auth.',
    )
    api_read_requires_key: bool = Field(
        default=False,
        description="Require X-API-Key on read-only API calls too (mutating calls always need one).",
    )
    max_upload_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="Largest network checkpoint the API accepts, in bytes."
    )
    sse_poll_s: float = Field(
        default=0.25, gt=0, description="How often a job's event stream checks the job row."
    )
    sqlite_busy_timeout_ms: int = Field(
        default=10_000, gt=0, description="How long a SQLite writer waits for the lock before failing."
    )
    job_stale_after_s: float = Field(
        default=60.0, gt=0, description="A running job whose heartbeat is older than this is interrupted."
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached: the environment is read once)."""
    return Settings()
