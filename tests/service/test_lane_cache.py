"""A worker lane reuses what it built for the runs it is working on, and lets go of the rest."""

from __future__ import annotations

from hwctl.jobs.context import LaneCache


def test_a_value_is_built_once_and_reused() -> None:
    cache = LaneCache(entries=2)
    builds: list[str] = []
    for _ in range(3):
        assert cache.get(("evaluator", 1), lambda: builds.append("run 1") or "evaluator 1") == "evaluator 1"
    assert builds == ["run 1"]


def test_the_least_recently_used_value_goes_when_the_cache_is_full() -> None:
    cache = LaneCache(entries=2)
    cache.get(("run", 1), lambda: 1)
    cache.get(("run", 2), lambda: 2)
    cache.get(("run", 1), lambda: -1)  # used again: run 2 is now the oldest
    cache.get(("run", 3), lambda: 3)
    assert len(cache) == 2 and ("run", 1) in cache and ("run", 3) in cache and ("run", 2) not in cache
    assert cache.get(("run", 2), lambda: 22) == 22  # built again when needed again
