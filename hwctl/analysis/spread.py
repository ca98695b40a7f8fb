"""Accuracy spread: per time and method, the mean over read draws and programmings and each
spread apart, with how many of each.

Two things make two measurements of one network at one time differ: the read noise of each
read of the chip (read draws, `schedule.reads_per_point`: the same programmed state read
again) and the programming itself (programming error and each device's drift exponent,
drawn anew when the experiment is programmed again: each run is one programming, one
"seed"). Per (time, method), with a_{r,d} the accuracy of draw d of programming r, n_r its
draws and R the programmings:

    m_r     = (1/n_r) Σ_d a_{r,d}                               programming r's mean
    mean    = (1/R) Σ_r m_r                                     each programming weighs the same
    σ_draws = √( Σ_r Σ_d (a_{r,d} − m_r)² / Σ_r (n_r − 1) )     pooled within programmings
    σ_prog  = √( Σ_r (m_r − mean)² / (R − 1) )                  (holds σ_draws²/n_r of read noise)

σ_draws needs two reads of one programming, σ_prog two programmings: without them the
spread is None, said "n/a", never 0. `n_draws` counts every read behind the mean (Σ n_r).
Every read uses the same test images, so the mean's test-set interval is the mean of the
reads' Wilson bounds, not narrower.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from hwctl.vocabulary import CompensationMethod

RecordKind = Literal["measured", "forecast"]


@dataclass(frozen=True)
class AccuracyRecord:
    """One accuracy point: measured from a stored readout, or forecast from the fits."""

    kind: RecordKind
    t_s: float  # time since programming
    method: str  # a CompensationMethod
    accuracy: float  # percent
    ci_low: float | None
    ci_high: float | None
    n_images: int
    label: str = ""  # e.g. "1 week" for forecasts
    # `accuracy` is the mean over read draws of one programmed state and over programmings
    # (`summarise`); a spread is None where there is only one of them.
    n_draws: int = 1
    draw_std: float | None = None
    n_programmings: int = 1
    programming_std: float | None = None
    point_s: float | None = None  # the scheduled offset (a forecast: the horizon) the reads share

    @property
    def point(self) -> float:
        """The scheduled offset or horizon the record belongs to (its time when not summarised)."""
        return self.t_s if self.point_s is None else self.point_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AccuracyRead:
    """One accuracy of one read draw of one programming at one point of the schedule."""

    programming: int  # the programming run (a forecast: one)
    point: float  # the scheduled offset s (a forecast: its horizon): a point's draws are grouped
    draw: int
    record: AccuracyRecord


def summarise(reads: Sequence[AccuracyRead]) -> list[AccuracyRecord]:
    """One record per (kind, point, method) with its mean and spreads, in time order, methods
    in `CompensationMethod` order; a read given twice (re-evaluated) counts once, the later."""
    latest = {(r.record.kind, r.point, r.record.method, r.programming, r.draw): r.record for r in reads}
    groups: dict[tuple[str, float, str], dict[int, list[AccuracyRecord]]] = {}
    for (kind, point, method, programming, _), record in latest.items():
        groups.setdefault((kind, point, method), {}).setdefault(programming, []).append(record)
    order: dict[str, int] = {method: k for k, method in enumerate(CompensationMethod)}
    combined = [
        _combined(list(by_programming.values()), point) for (_, point, _), by_programming in groups.items()
    ]
    return sorted(combined, key=lambda r: (r.kind, r.t_s, order.get(r.method, len(order))))


def _combined(programmings: list[list[AccuracyRecord]], point_s: float) -> AccuracyRecord:
    accuracies = [np.array([r.accuracy for r in reads]) for reads in programmings]
    means = np.array([a.mean() for a in accuracies])
    dof = sum(a.size - 1 for a in accuracies)
    squares = sum(float(np.sum((a - a.mean()) ** 2)) for a in accuracies)
    every = [r for reads in programmings for r in reads]
    return replace(
        every[0],
        t_s=float(np.mean([r.t_s for r in every])),
        accuracy=float(means.mean()),
        ci_low=_mean_bound([r.ci_low for r in every]),
        ci_high=_mean_bound([r.ci_high for r in every]),
        n_draws=len(every),
        draw_std=float(np.sqrt(squares / dof)) if dof else None,
        n_programmings=len(programmings),
        programming_std=float(means.std(ddof=1)) if means.size > 1 else None,
        point_s=point_s,
    )


def _mean_bound(bounds: list[float | None]) -> float | None:
    known = [b for b in bounds if b is not None]
    return float(np.mean(known)) if known and len(known) == len(bounds) else None


def draws_text(record: AccuracyRecord) -> str:
    """The spread over read draws for people: '± 0.80 (3 reads)', or why there is none."""
    if record.draw_std is not None:
        return f"± {record.draw_std:.2f} ({record.n_draws} reads)"
    return "n/a (1 read)" if record.n_programmings == 1 else "n/a (1 read per programming)"


def programmings_text(record: AccuracyRecord) -> str:
    """The spread over programmings for people: '± 4.10 (3 programmings)', or 'n/a (1 programming)'."""
    if record.programming_std is not None:
        return f"± {record.programming_std:.2f} ({record.n_programmings} programmings)"
    return "n/a (1 programming)"
