"""Schema migrations: upgrade, inspect and refuse to run on an unmigrated database.

The Alembic configuration is built in code from the `migrations` package's location,
so `hwctl db upgrade` works from an installed package without an ini file. Only
`upgrade` may create a SQLite file; inspecting a missing one says to run it instead.
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
from hwctl.store.engine import connect, create_sqlite_file, describe, is_sqlite, sqlite_file
from hwctl.store.errors import NoDatabaseError, NotMigratedError
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
    """The revision the database is at (None: empty); a missing SQLite file raises `NoDatabaseError`."""
    _require_existing(engine)
    with connect(engine) as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _require_existing(engine: Engine) -> None:
    path = sqlite_file(engine)
    if path is not None and not path.exists():
        raise NoDatabaseError(str(path), head_revision())


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database up to `revision` (idempotent at head), creating a SQLite file if needed."""
    create_sqlite_file(engine)
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate down to `revision` (`base` drops every hwctl table)."""
    _require_existing(engine)
    _run(engine, "downgrade", revision)


def _run(engine: Engine, direction: str, revision: str) -> None:
    """On SQLite with foreign keys off (set outside the transaction, where the pragma
    counts): a batch migration recreates a table by dropping it, and with them on, the
    drop cascades into every row that references it (0008 lost every evaluation so)."""
    config = alembic_config(engine)
    with connect(engine) as connection:
        raw = connection.connection.driver_connection if is_sqlite(engine) else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                config.attributes["connection"] = connection
                getattr(command, direction)(config, revision)
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=ON")


def ensure_migrated(engine: Engine) -> None:
    """Raise `NotMigratedError` unless the database is at the head revision.

    Every command and service calls this first, so it is also where an unreachable
    database (`DatabaseUnavailableError`) or a missing SQLite file (`NoDatabaseError`) is told.
    """
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise NotMigratedError(describe(engine), current, head)


def schema_drift(engine: Engine) -> list[object]:
    """Differences between the migrated database and `hwctl.store.schema` (empty: in sync)."""
    with connect(engine) as connection:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))
