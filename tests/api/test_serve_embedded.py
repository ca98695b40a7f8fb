"""`hwctl serve`'s embedded station runs a virtual clock unless asked for an accelerated one,
and keeps its chip's state in a file unless asked not to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from hwctl.cli import CLIError
from hwctl.commands.serve import default_chip_state, embedded_resource, ensure_embedded_station
from hwctl.embedded_chip import SimChipOptions, with_state
from hwctl.station import open_station
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


def test_the_embedded_chip_keeps_its_state_beside_a_sqlite_database_else_under_var(tmp_path: Path) -> None:
    beside = default_chip_state(f"sqlite:///{tmp_path / 'db' / 'hwctl.sqlite'}", "sim")
    assert beside == tmp_path / "db" / "sim.chip-state"
    assert default_chip_state("postgresql+psycopg://hwctl@db/hwctl", "lab") == Path("var") / "lab.chip-state"
    resource = embedded_resource("accelerated", 100, tmp_path / "a b.chip-state")
    assert resource == f"sim://?clock=accelerated&rate=100&state={tmp_path}/a%20b.chip-state"
    assert SimChipOptions.parse(resource).state == tmp_path / "a b.chip-state"


def _pulse_and_read(resource: str, pulse: bool) -> tuple[float, np.ndarray]:
    """Open the station as the worker does, optionally SET-pulse every device, read them back."""
    addresses = np.arange(256, dtype=np.uint32)
    with open_station("sim", resource) as station:
        if pulse:
            station.chip.reset(addresses)
            station.chip.set_pulse(addresses, np.full(256, 120.0, dtype=np.float32))
            station.advance_to_s(station.clock_now_s() + 60.0)
        return station.read_block(addresses)


@pytest.mark.parametrize("kept", [True, False])
def test_a_restarted_embedded_chip_finds_its_devices_and_clock_only_with_a_state_file(
    tmp_path: Path, kept: bool
) -> None:
    resource = "sim://?clock=virtual&geometry=1x16x16"
    if kept:
        resource = with_state(resource, tmp_path / "sim.chip-state")
    before_s, before_us = _pulse_and_read(resource, pulse=True)
    after_s, after_us = _pulse_and_read(resource, pulse=False)  # a new process would open it so
    assert before_us.min() > 1.0  # programmed well above a blank device
    if kept:
        assert after_s >= before_s
        # The same devices, not a fresh programming: equal up to read noise and drift.
        assert abs(after_us.mean() / before_us.mean() - 1) < 0.05
        assert np.corrcoef(after_us, before_us)[0, 1] > 0.8
    else:
        assert after_s < before_s and after_us.max() < 0.5 * before_us.min()
