"""Accuracy spread: the mean over read draws and programmings, each spread apart with how
many there were, and 'n/a' (never 0) where there is only one."""

from __future__ import annotations

import numpy as np
import pytest

from hwctl.analysis.spread import AccuracyRead, AccuracyRecord, draws_text, programmings_text, summarise


def _read(run: int, offset_s: float, draw: int, accuracy: float, method: str = "gdc") -> AccuracyRead:
    record = AccuracyRecord("measured", offset_s + draw, method, accuracy, accuracy - 2, accuracy + 2, 100)
    return AccuracyRead(run, offset_s, draw, record)


def test_three_reads_of_one_programming_give_their_mean_and_sample_std() -> None:
    (point,) = summarise([_read(1, 25.0, d, a) for d, a in enumerate((80.0, 82.0, 87.0))])
    assert point.accuracy == pytest.approx(83.0)
    assert point.draw_std == pytest.approx(np.std([80.0, 82.0, 87.0], ddof=1))
    assert (point.n_draws, point.n_programmings, point.programming_std) == (3, 1, None)
    assert point.t_s == pytest.approx(26.0) and point.point_s == 25.0
    assert (point.ci_low, point.ci_high) == (pytest.approx(81.0), pytest.approx(85.0))
    assert draws_text(point) == f"± {point.draw_std:.2f} (3 reads)"
    assert programmings_text(point) == "n/a (1 programming)"


def test_draws_are_pooled_within_programmings_and_programmings_weigh_the_same() -> None:
    reads = [_read(1, 25.0, d, a) for d, a in enumerate((70.0, 72.0))]
    reads += [_read(2, 25.0, d, a) for d, a in enumerate((90.0, 91.0, 92.0, 93.0))]
    (point,) = summarise(reads)
    assert point.accuracy == pytest.approx((71.0 + 91.5) / 2)  # not the mean of all six reads
    pooled = np.sqrt((2.0 + 5.0) / (1 + 3))  # within each programming: Σ squares / Σ (n_r − 1)
    assert point.draw_std == pytest.approx(pooled)
    assert point.programming_std == pytest.approx(np.std([71.0, 91.5], ddof=1))
    assert (point.n_draws, point.n_programmings) == (6, 2)
    assert programmings_text(point) == f"± {point.programming_std:.2f} (2 programmings)"


def test_one_read_is_a_spread_of_none_said_n_a_never_zero() -> None:
    (single,) = summarise([_read(1, 25.0, 0, 80.0)])
    assert (single.draw_std, single.programming_std, single.n_draws, single.n_programmings) == (
        None,
        None,
        1,
        1,
    )
    assert draws_text(single) == "n/a (1 read)"
    assert programmings_text(single) == "n/a (1 programming)"
    (two_runs,) = summarise([_read(1, 25.0, 0, 80.0), _read(2, 25.0, 0, 84.0)])
    assert two_runs.draw_std is None and two_runs.programming_std == pytest.approx(np.std([80, 84], ddof=1))
    assert draws_text(two_runs) == "n/a (1 read per programming)"


def test_points_come_in_time_order_methods_in_vocabulary_order_and_a_re_evaluation_counts_once() -> None:
    reads = [
        _read(1, 100.0, 0, 60.0, "adabs"),
        _read(1, 100.0, 0, 50.0, "none"),
        _read(1, 25.0, 0, 90.0, "gdc"),
    ]
    reads.append(_read(1, 100.0, 0, 55.0, "none"))  # the same read evaluated again: the later one counts
    points = summarise(reads)
    assert [(p.point_s, p.method, p.accuracy, p.n_draws) for p in points] == [
        (25.0, "gdc", 90.0, 1), (100.0, "none", 55.0, 1), (100.0, "adabs", 60.0, 1),
    ]  # fmt: skip
