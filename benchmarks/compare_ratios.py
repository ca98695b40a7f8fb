"""Medians and ratios (new ÷ old) of the runs `benchmarks/compare_trees.sh` left in OUT.

    python -m benchmarks.compare_ratios OUT      # prints a table, writes OUT/ratios.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

# benchmark file prefix -> the JSON keys compared (dotted for nested keys)
METRICS: dict[str, tuple[str, ...]] = {
    "pv": ("seconds_inprocess", "seconds_visa"),
    "store": (
        "ingest_ms_sqlite", "ingest_ms_postgresql", "device_series_ms_sqlite",
        "device_series_ms_postgresql", "load_readout_ms_sqlite", "load_readout_ms_postgresql",
    ),
    "camp": ("campaign.wall_s.program_and_readbacks", "campaign.wall_s.total_with_drift_fit"),
}


def _value(document: dict[str, Any], dotted: str) -> float:
    node: Any = document
    for part in dotted.split("."):
        node = node[part]
    return float(node)


def _runs(out: Path, prefix: str, side: str, key: str) -> list[float]:
    values = []
    for path in sorted(out.glob(f"{prefix}_{side}_*.json")):
        try:
            values.append(_value(json.loads(path.read_text()), key))
        except (KeyError, ValueError, json.JSONDecodeError):
            continue  # a run that failed or lacks the key (an older tree) is left out
    return values


def compare(out: Path) -> dict[str, dict[str, Any]]:
    ratios: dict[str, dict[str, Any]] = {}
    for prefix, keys in METRICS.items():
        for key in keys:
            old, new = _runs(out, prefix, "base", key), _runs(out, prefix, "main", key)
            if old and new:
                old_s, new_s = statistics.median(old), statistics.median(new)
                ratios[f"{prefix}.{key}"] = {
                    "base_median": old_s, "main_median": new_s, "ratio": new_s / old_s,
                    "base_runs": old, "main_runs": new,
                }  # fmt: skip
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    out: Path = parser.parse_args().out
    ratios = compare(out)
    for name, r in ratios.items():
        print(f"{name:45s} old {r['base_median']:9.3f} new {r['main_median']:9.3f} ratio {r['ratio']:5.2f}")
    (out / "ratios.json").write_text(json.dumps(ratios, indent=1))


if __name__ == "__main__":
    main()
