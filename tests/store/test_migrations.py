"""Migrations run up and down on both databases; the service refuses an unmigrated one."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from hwctl.cli import main
from hwctl.store.engine import make_engine
from hwctl.store.errors import NotMigratedError
from hwctl.store.migrate import (
    current_revision,
    downgrade,
    ensure_migrated,
    head_revision,
    schema_drift,
    upgrade,
)
from hwctl.store.schema import metadata


def test_upgrade_creates_every_table_and_matches_the_schema_exactly(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())
    assert schema_drift(engine) == []
    engine.dispose()


def test_downgrade_to_base_removes_every_table_and_upgrade_again_works(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) & set(metadata.tables) == set()
    upgrade(engine)
    ensure_migrated(engine)
    engine.dispose()


def test_unmigrated_database_is_refused_with_the_command_to_run(database_url: str) -> None:
    engine = make_engine(database_url)
    engine.connect().close()  # an empty database, on SQLite an empty file
    with pytest.raises(NotMigratedError) as refused:
        ensure_migrated(engine)
    message = str(refused.value)
    assert "is not migrated (revision None" in message
    assert f"head {head_revision()}" in message
    assert "hwctl db upgrade" in message
    engine.dispose()


def test_cli_upgrades_reports_and_checks_the_database(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "check", "--url", database_url]) == 2
    assert "hwctl db upgrade" in capsys.readouterr().err
    assert main(["db", "upgrade", "--url", database_url]) == 0
    assert main(["db", "current", "--url", database_url]) == 0
    assert f"revision {head_revision()}" in capsys.readouterr().out
    assert main(["db", "check", "--url", database_url]) == 0
