"""`hwctl serve`'s embedded station runs a virtual clock unless asked for an accelerated one."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from hwctl.cli import CLIError
from hwctl.commands.serve import embedded_resource, ensure_embedded_station
from hwctl.store.engine import make_engine
from hwctl.store.schema import stations
from tests.api.conftest import migrated_sqlite_url


def _station(url: str, name: str) -> tuple[str, str]:
    engine = make_engine(url)
    with engine.connect() as conn:
        query = select(stations.c.resource, stations.c.clock_kind).where(stations.c.name == name)
        row = conn.execute(query).one()
    engine.dispose()
    return row.resource, row.clock_kind


def test_embedded_station_defaults_to_a_virtual_clock_and_follows_a_later_choice(tmp_path: Path) -> None:
    url = migrated_sqlite_url(tmp_path)
    engine = make_engine(url)
    ensure_embedded_station(engine, "sim")
    assert _station(url, "sim") == ("sim://?clock=virtual", "virtual")
    ensure_embedded_station(engine, "sim", embedded_resource("accelerated", 100))
    engine.dispose()
    assert _station(url, "sim") == ("sim://?clock=accelerated&rate=100", "accelerated")


def test_a_non_positive_rate_is_a_user_error() -> None:
    with pytest.raises(CLIError, match="--rate must be positive"):
        embedded_resource("accelerated", 0)
