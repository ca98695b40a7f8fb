"""Schema migrations: upgrade, inspect and refuse to run on an unmigrated database.

The Alembic configuration is built in code from the `migrations` package's location,
so `hwctl db upgrade` works from an installed package without an ini file.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import migrations
from hwctl.store.engine import describe
from hwctl.store.errors import NotMigratedError
from hwctl.store.schema import metadata


def alembic_config(engine: Engine | None = None) -> Config:
    """Alembic config pointing at the bundled migrations; bound to `engine` if given."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if engine is not None:
        config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database up to `revision` (idempotent at head)."""
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate down to `revision` (`base` drops every hwctl table)."""
    _run(engine, "downgrade", revision)


def _run(engine: Engine, direction: str, revision: str) -> None:
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, direction)(config, revision)


def ensure_migrated(engine: Engine) -> None:
    """Raise `NotMigratedError` unless the database is at the head revision."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise NotMigratedError(describe(engine), current, head)


def schema_drift(engine: Engine) -> list[object]:
    """Differences between the migrated database and `hwctl.store.schema` (empty: in sync)."""
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))
