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
    before_start, start, after_start = time.monotonic(), clock.now_s(), time.monotonic()
    time.sleep(0.05)
    before_end, end, after_end = time.monotonic(), clock.now_s(), time.monotonic()
    # Bracketed by wall readings, so a sleep that overruns on a busy machine cannot fail it.
    rounding_s = 1e-6
    assert 1000.0 * (before_end - after_start) - rounding_s <= end - start
    assert end - start <= 1000.0 * (after_end - before_start) + rounding_s
    clock.advance(3600.0)
    assert clock.now_s() - start > 3600.0


def test_real_clock_refuses_acceleration_and_jumps() -> None:
    clock = RealClock()
    with pytest.raises(ValueError):
        clock.advance(1.0)
    with pytest.raises(ValueError):
        clock.set_rate(2.0)
