"""The simulated chip at 50 M devices, and what a crash-safe state file costs.

    python -m benchmarks.sim_chip --json benchmarks/results/sim_chip.json

1. A 50 M-device chip (48 tiles of 512×2048) in process: power-up, RESET of every
   device, one SET pulse each, one read each after t0 — in host blocks of 2 M devices
   (the driver's block size), volatile and with a state file. Each variant runs in its
   own child process, so its peak RSS (`resource.getrusage`) is its own; the state
   file's mapped pages count in it.
2. The state file's cost on a ResNet-32-sized programming run (923,744 devices through
   `hwctl.program_verify`, same targets as `benchmarks.program_verify`), volatile and
   with `state_path`, alternating `--repeats` times; medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import emit, machine_info
from drivers.base import Geometry
from drivers.sim.board import DEFAULT_GEOMETRY, GEOMETRY_PRESETS, SimBoard
from drivers.sim.state import BYTES_PER_DEVICE, CHUNK_DEVICES, file_bytes

HOST_BLOCK_DEVICES = 1 << 21


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _blocks(n: int) -> list[slice]:
    return [slice(s, min(s + HOST_BLOCK_DEVICES, n)) for s in range(0, n, HOST_BLOCK_DEVICES)]


def big_chip(geometry: Geometry, state_dir: Path | None) -> dict[str, Any]:
    """Power-up, RESET, SET and read of every device; seconds per stage and peak RSS."""
    n = geometry.n_devices
    path = None if state_dir is None else state_dir / "chip.state"
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    board = SimBoard(geometry, seed=1, state_path=path)
    seconds["power_up"] = time.perf_counter() - start
    rng = np.random.default_rng(2)
    blocks = _blocks(n)
    start = time.perf_counter()
    for part in blocks:
        board.reset(np.arange(part.start, part.stop, dtype=np.uint32))
    seconds["reset"] = time.perf_counter() - start
    start = time.perf_counter()
    for part in blocks:
        addresses = np.arange(part.start, part.stop, dtype=np.uint32)
        board.set_pulse(addresses, rng.uniform(60.0, 200.0, addresses.size).astype(np.float32))
    seconds["set_pulse"] = time.perf_counter() - start
    board.clock.advance(board.array.model.t0_s)
    start = time.perf_counter()
    checksum = 0.0
    for part in blocks:
        checksum += float(board.read_block(np.arange(part.start, part.stop, dtype=np.uint32)).sum())
    seconds["read"] = time.perf_counter() - start
    result: dict[str, Any] = {
        "devices": n,
        "state_file": path is not None,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "seconds_program_and_read": round(seconds["reset"] + seconds["set_pulse"] + seconds["read"], 2),
        "mean_conductance_us": round(checksum / n, 3),
    }
    if path is not None:
        start = time.perf_counter()
        board.close()
        result["seconds_close_sync"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        again = SimBoard(geometry, seed=1, state_path=path)
        result["seconds_restart"] = round(time.perf_counter() - start, 2)
        result["restart_board_time_s"] = again.board_time_s()
        result["file_bytes"] = path.stat().st_size
        result["file_bytes_on_disk"] = path.stat().st_blocks * 512
    result["peak_rss_gb"] = round(_peak_rss_gb(), 3)
    result["device_arrays_gb"] = round(BYTES_PER_DEVICE * n / 2**30, 3)
    return result


def program_run(addresses: np.ndarray, targets: np.ndarray, state_dir: Path | None) -> float:
    from hwctl.program_verify import program_and_verify

    path = None if state_dir is None else state_dir / f"pv-{time.monotonic_ns()}.state"
    board = SimBoard(DEFAULT_GEOMETRY, seed=1, state_path=path)
    start = time.perf_counter()
    program_and_verify(board, addresses, targets)
    seconds = time.perf_counter() - start
    board.close()
    if path is not None:
        path.unlink()
    return seconds


def state_cost(repeats: int, state_dir: Path) -> dict[str, Any]:
    from benchmarks.program_verify import targets_and_addresses

    addresses, targets, source = targets_and_addresses(923_744, DEFAULT_GEOMETRY)
    volatile, stateful = [], []
    for _ in range(repeats):
        volatile.append(program_run(addresses, targets, None))
        stateful.append(program_run(addresses, targets, state_dir))
    median_volatile, median_state = statistics.median(volatile), statistics.median(stateful)
    return {
        "devices": int(addresses.size),
        "chip": DEFAULT_GEOMETRY.n_devices,
        "targets": source,
        "runs_volatile_s": [round(s, 3) for s in volatile],
        "runs_state_file_s": [round(s, 3) for s in stateful],
        "seconds_volatile": round(median_volatile, 3),
        "seconds_state_file": round(median_state, 3),
        "ratio_state_over_volatile": round(median_state / median_volatile, 3),
    }


def _child(geometry: Geometry, with_state: bool, state_dir: Path) -> dict[str, Any]:
    """Run `big_chip` in a fresh process so its peak RSS is its own."""
    text = f"{geometry.tiles},{geometry.rows},{geometry.cols}"
    command = [sys.executable, "-m", "benchmarks.sim_chip", "--child", text, "--state-dir", str(state_dir)]
    if not with_state:
        command.append("--volatile")
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", default="50m", help="T,R,C or a preset (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating programming runs")
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--state-dir", type=Path, help="where state files go (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--volatile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        tiles, rows, cols = (int(v) for v in args.child.split(","))
        print(json.dumps(big_chip(Geometry(tiles, rows, cols), None if args.volatile else args.state_dir)))
        return
    if args.geometry in GEOMETRY_PRESETS:
        geometry = GEOMETRY_PRESETS[args.geometry]
    else:
        tiles, rows, cols = (int(v) for v in args.geometry.split(","))
        geometry = Geometry(tiles, rows, cols)
    with tempfile.TemporaryDirectory(dir=args.state_dir) as folder:
        state_dir = Path(folder)
        chip = {"volatile": _child(geometry, False, state_dir),
                "state_file": _child(geometry, True, state_dir)}
        (state_dir / "chip.state").unlink()
        cost = state_cost(args.repeats, state_dir)
    emit({
        "machine": machine_info(numpy=np.__version__),
        "geometry": [geometry.tiles, geometry.rows, geometry.cols],
        "bytes_per_device": BYTES_PER_DEVICE,
        "state_file_bytes": file_bytes(geometry.n_devices),
        "chunk_devices": CHUNK_DEVICES,
        "host_block_devices": HOST_BLOCK_DEVICES,
        "chip": chip,
        "target_peak_rss_gb": 2.0,
        "state_file_cost_resnet32": cost,
    }, args.json)


if __name__ == "__main__":
    main()
