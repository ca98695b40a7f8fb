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
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL; the embedded default is a SQLite file relative to the cwd.",
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description='Keys accepted in the X-API-Key header, as JSON: \'["k1", "k2"]\'. Empty: no auth.',
    )
    sqlite_busy_timeout_ms: int = Field(
        10_000, gt=0, description="How long a SQLite writer waits for the lock before failing."
    )
    job_stale_after_s: float = Field(
        60.0, gt=0, description="A running job whose heartbeat is older than this is interrupted."
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached: the environment is read once)."""
    return Settings()
