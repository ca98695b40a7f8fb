"""Readback schedules: when, after programming, a campaign reads the chip back.

Drift is linear in log time (pcm-model.md §3), so readouts are log-spaced: the default
puts about 20 points between t0 ≈ 25 s and 24 h, as in the paper's experiment.
"""

from __future__ import annotations

import numpy as np

DAY_S = 86_400.0


def log_spaced_offsets_s(first_s: float = 25.0, last_s: float = DAY_S, points: int = 20) -> list[float]:
    """`points` offsets from `first_s` to `last_s`, evenly spaced in log time."""
    if not (0 < first_s < last_s):
        raise ValueError(f"need 0 < first ({first_s} s) < last ({last_s} s)")
    if points < 2:
        raise ValueError(f"a schedule needs at least 2 points, got {points}")
    return [float(round(x, 3)) for x in np.geomspace(first_s, last_s, points)]


def validate_offsets_s(offsets_s: list[float]) -> list[float]:
    """Sorted, unique, strictly positive offsets; a clear error otherwise."""
    if not offsets_s:
        raise ValueError("a readback schedule needs at least one offset")
    bad = [x for x in offsets_s if not np.isfinite(x) or x <= 0]
    if bad:
        raise ValueError(f"readback offsets must be positive seconds after programming, got {bad}")
    return sorted(set(float(x) for x in offsets_s))


def readout_window_s(offset_s: float, fraction: float = 0.5, minimum_s: float = 60.0) -> float:
    """How late a readback may still run before it counts as missed.

    Proportional to the offset (a 1-day point may slip by hours and still sit where it
    belongs on a log axis; a 25-s point may not) with a floor for short offsets.
    """
    return max(offset_s * fraction, minimum_s)


def duration_label(t_s: float) -> str:
    """A readable time since programming for tables: '25 s', '3.2 min', '4.1 h', '1 d'."""
    for unit, size in (("d", DAY_S), ("h", 3600.0), ("min", 60.0)):
        if t_s >= size:
            return f"{t_s / size:.3g} {unit}"
    return f"{t_s:.3g} s"
