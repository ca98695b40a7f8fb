"""Faults benchmark (issue 9): whole campaigns under the faults a lab sees, timed.

    python -m benchmarks.faults --json benchmarks/results/faults.json
    python -m benchmarks.faults --scale ci --scenario link_drop_readback   # the test suite's scale

Runs the fault-injection suite's scenarios (`tests.faults.scenarios`, the same code the
tests run) at the issue's scale: a real-time chip clock, a schedule of 6 readbacks over
30 s, 10 s outages, and the worker on the deployment's default settings (link timeout,
reconnect backoff), so the recovery times are what a lab gets out of the box. Per
scenario: `recovered` (the campaign ended as the issue says, on its own), `recovery_s`
(from the fault's end to the first work committed after it), `lost`, `duplicated`,
`late` (readbacks started more than 2 s after their scheduled time: during an outage they
must be), and every expectation that was not met, with the log lines that explain it.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import emit, machine_info
from tests.faults.lab import Lab, fresh_postgres_database, postgres_clusters, sqlite_database
from tests.faults.scenarios import CI_SCALE, ISSUE_SCALE, SCENARIOS, Scale, Scenario, run_scenario

SCALES = {"issue": ISSUE_SCALE, "ci": CI_SCALE}


@contextlib.contextmanager
def lab_for(scenario: Scenario, directory: Path) -> Iterator[Lab]:
    """A lab of its own per scenario, on the scenario's database."""
    directory.mkdir(parents=True)
    if scenario.database == "postgres":
        with fresh_postgres_database() as url, Lab(directory, url) as lab:
            yield lab
    else:
        with Lab(directory, sqlite_database(directory)) as lab:
            yield lab


def run(names: list[str], scale: Scale, directory: Path) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    for name in names:
        scenario = SCENARIOS[name]
        if scenario.database == "postgres" and not postgres_clusters():
            scenarios[name] = {"skipped": "no local PostgreSQL cluster to restart"}
            continue
        started_s = time.monotonic()
        with lab_for(scenario, directory / name) as lab:
            result = run_scenario(scenario, lab, scale)
        scenarios[name] = {**result.figures(), "wall_s": round(time.monotonic() - started_s, 1)}
        figures = ("recovered", "recovery_s", "lost", "duplicated", "late")
        shown = " ".join(f"{figure}={scenarios[name][figure]}" for figure in figures)
        print(f"{name}: {shown} problems={len(result.problems)}", flush=True)
    return scenarios


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--scale", choices=sorted(SCALES), default="issue")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="run only these (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--keep", type=Path, help="keep the labs' logs and databases in this folder")
    args = parser.parse_args()
    scale = SCALES[args.scale]
    names = args.scenario or list(SCENARIOS)
    with contextlib.ExitStack() as stack:
        directory = args.keep or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="hwctl-faults-"))
        )
        scenarios = run(names, scale, directory)
    result = {
        "benchmark": "faults",
        "scale": {"name": args.scale, "clock": scale.clock, "offsets_s": list(scale.offsets_s),
                  "outage_s": scale.outage_s, "watchdog_s": scale.watchdog_s,
                  "worker_settings": dict(scale.worker.settings) or "deployment defaults",
                  "block_devices": scale.worker.block_devices},
        "scenarios": scenarios,
        "machine": machine_info(),
    }  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
