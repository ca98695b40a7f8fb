"""Alembic environment: migrate the connection `hwctl.store.migrate` hands over, or the
database that `HWCTL_DATABASE_URL` names when Alembic is run directly."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from hwctl.settings import get_settings
from hwctl.store.engine import make_engine
from hwctl.store.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(get_settings().database_url)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported: run `hwctl db upgrade`")
run_migrations_online()
