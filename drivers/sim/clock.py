"""Clocks for the simulated board: real, accelerated and manually advanced time.

The board's clock is what drift is measured against, so a 24 h readback schedule on a
virtual or accelerated clock runs in seconds through exactly the same code path.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_s(self) -> float:
        """Board time in seconds (monotonic, arbitrary origin)."""
        ...

    def advance(self, seconds: float) -> None:
        """Jump forward; real clocks refuse (ValueError)."""
        ...


class VirtualClock:
    """Time moves only when advanced: deterministic tests and instant schedules."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = start_s
        self._lock = threading.Lock()

    def now_s(self) -> float:
        return self._now_s

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time can only move forward")
        with self._lock:
            self._now_s += seconds


class AcceleratedClock:
    """Real time multiplied by `rate`, plus any explicit advances."""

    def __init__(self, rate: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._rate = rate
        self._origin = time.monotonic()
        self._base_s = 0.0
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        with self._lock:
            self._base_s = self.now_s()
            self._origin = time.monotonic()
            self._rate = rate

    def now_s(self) -> float:
        return self._base_s + (time.monotonic() - self._origin) * self._rate

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time can only move forward")
        with self._lock:
            self._base_s += seconds


class RealClock(AcceleratedClock):
    """Wall time (rate 1); cannot be advanced, as on a physical board."""

    def __init__(self) -> None:
        super().__init__(rate=1.0)

    def set_rate(self, rate: float) -> None:
        raise ValueError("a real-time clock cannot be accelerated")

    def advance(self, seconds: float) -> None:
        raise ValueError("a real-time clock cannot be advanced")
