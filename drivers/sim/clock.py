"""Clocks for the simulated board: real, accelerated and manually advanced time.

The board's clock is what drift is measured against, so a 24 h readback schedule on a
virtual or accelerated clock runs in seconds through exactly the same code path.
A non-volatile board (`drivers.sim.state`) listens to its clock so that every jump is
saved before it is acknowledged, and powers a clock up at the saved time after a restart.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

Listener = Callable[[], None]


class Clock(Protocol):
    def now_s(self) -> float:
        """Board time in seconds (monotonic, arbitrary origin)."""
        ...

    def advance(self, seconds: float) -> None:
        """Jump forward; real clocks refuse (ValueError)."""
        ...

    def wall_rate(self) -> float:
        """Board seconds per wall-clock second while nobody advances it (0: virtual)."""
        ...

    def power_on(self, start_s: float) -> None:
        """Start over at `start_s`, as the board's clock does when the board powers up."""
        ...

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` after every jump (advance, rate change, power-on)."""
        ...


class _Listened:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _jumped(self) -> None:
        for listener in self._listeners:
            listener()


class VirtualClock(_Listened):
    """Time moves only when advanced: deterministic tests and instant schedules."""

    def __init__(self, start_s: float = 0.0) -> None:
        super().__init__()
        self._now_s = start_s

    def now_s(self) -> float:
        return self._now_s

    def wall_rate(self) -> float:
        return 0.0

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time can only move forward")
        with self._lock:
            self._now_s += seconds
        self._jumped()

    def power_on(self, start_s: float) -> None:
        with self._lock:
            self._now_s = start_s
        self._jumped()


def _check_rate(rate: float) -> None:
    """A rate that is not a positive finite number (NaN compares false with everything)
    would make every board time NaN or infinite."""
    if not 0 < rate < math.inf:
        raise ValueError(f"rate must be positive and finite, got {rate}")


class AcceleratedClock(_Listened):
    """Real time multiplied by `rate`, plus any explicit advances."""

    def __init__(self, rate: float = 1.0) -> None:
        super().__init__()
        _check_rate(rate)
        self._rate = rate
        self._origin = time.monotonic()
        self._base_s = 0.0

    @property
    def rate(self) -> float:
        return self._rate

    def wall_rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        _check_rate(rate)
        with self._lock:
            self._base_s = self.now_s()
            self._origin = time.monotonic()
            self._rate = rate
        self._jumped()

    def now_s(self) -> float:
        return self._base_s + (time.monotonic() - self._origin) * self._rate

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time can only move forward")
        with self._lock:
            self._base_s += seconds
        self._jumped()

    def power_on(self, start_s: float) -> None:
        with self._lock:
            self._base_s = start_s
            self._origin = time.monotonic()
        self._jumped()


class RealClock(AcceleratedClock):
    """Wall time (rate 1); cannot be advanced, as on a physical board."""

    def __init__(self) -> None:
        super().__init__(rate=1.0)

    def set_rate(self, rate: float) -> None:
        raise ValueError("a real-time clock cannot be accelerated")

    def advance(self, seconds: float) -> None:
        raise ValueError("a real-time clock cannot be advanced")
