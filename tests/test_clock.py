"""Board clocks: virtual, accelerated and real time."""

from __future__ import annotations

import time

import pytest

from drivers.sim.clock import AcceleratedClock, RealClock, VirtualClock


def test_virtual_clock_moves_only_when_advanced() -> None:
    clock = VirtualClock(start_s=10.0)
    time.sleep(0.01)
    assert clock.now_s() == 10.0
    clock.advance(86_400.0)
    assert clock.now_s() == 86_410.0


def test_no_clock_moves_backwards() -> None:
    with pytest.raises(ValueError):
        VirtualClock().advance(-1.0)
    with pytest.raises(ValueError):
        AcceleratedClock(rate=10.0).advance(-1.0)


def test_accelerated_clock_runs_rate_times_faster_and_can_jump() -> None:
    clock = AcceleratedClock(rate=1000.0)
    start = clock.now_s()
    time.sleep(0.05)
    elapsed = clock.now_s() - start
    assert 40.0 < elapsed < 500.0
    clock.advance(3600.0)
    assert clock.now_s() - start > 3600.0


def test_real_clock_refuses_acceleration_and_jumps() -> None:
    clock = RealClock()
    with pytest.raises(ValueError):
        clock.advance(1.0)
    with pytest.raises(ValueError):
        clock.set_rate(2.0)
