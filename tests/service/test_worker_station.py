"""The station: one chip reached over a real transport, and the clock its schedule runs on."""

from __future__ import annotations

import time

import numpy as np
import pytest

from drivers.base import Geometry
from hwctl.embedded_chip import SimChipOptions, start_embedded_chip
from hwctl.station import StationError, open_station

SMALL = "geometry=1x32x32"


def test_closing_a_station_leaves_the_board_in_its_safe_state() -> None:
    chip = start_embedded_chip(SimChipOptions(virtual=True, geometry=Geometry(1, 32, 32)))
    try:
        station = open_station("bench", chip.resource)
        addresses = np.arange(8, dtype=np.uint32)
        station.chip.set_pulse(addresses, np.full(8, 120.0, np.float32))
        assert chip.board.pulser_enabled
        station.close()
        assert not chip.board.pulser_enabled
    finally:
        chip.stop()


def test_virtual_clock_station_jumps_to_the_requested_board_time() -> None:
    with open_station("bench", f"sim://?clock=virtual&{SMALL}") as station:
        assert station.advances_clock
        start_s = station.clock_now_s()
        assert station.advance_to_s(start_s + 3600.0)
        assert station.clock_now_s() == pytest.approx(start_s + 3600.0)


def test_accelerated_station_converts_board_seconds_to_wall_seconds_by_observed_rate() -> None:
    with open_station("bench", f"sim://?rate=1000&{SMALL}") as station:
        time.sleep(0.2)
        station.clock_now_s()
        assert station.clock_rate() == pytest.approx(1000.0, rel=0.2)
        assert station.wall_delay_s(100.0, cap_s=5.0) == pytest.approx(0.1, rel=0.2)
        assert station.wall_delay_s(1e6, cap_s=0.5) == 0.5
        assert not station.advance_to_s(station.clock_now_s() + 10.0)


@pytest.mark.parametrize(
    "resource", ["sim://?clock=sundial", "sim://?rate=-1", "sim://?geometry=4x4", "sim://?colour=red"]
)
def test_malformed_simulated_chip_resource_is_a_clear_error(resource: str) -> None:
    with pytest.raises(StationError, match="sim://"):
        SimChipOptions.parse(resource)
