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
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds_process"] = round(usage.ru_utime + usage.ru_stime, 2)
    result["peak_rss_gb"] = round(_peak_rss_gb(), 3)
    result["device_arrays_gb"] = round(BYTES_PER_DEVICE * n / 2**30, 3)
    return result


def program_run(addresses: np.ndarray, targets: np.ndarray, state_dir: Path | None) -> tuple[float, float]:
    """Wall and CPU seconds (this process, kernel time included) of one programming run."""
    from hwctl.program_verify import program_and_verify

    path = None if state_dir is None else state_dir / f"pv-{time.monotonic_ns()}.state"
    board = SimBoard(DEFAULT_GEOMETRY, seed=1, state_path=path)
    start, start_cpu = time.perf_counter(), time.process_time()
    program_and_verify(board, addresses, targets)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    board.close()
    if path is not None:
        path.unlink()
    return seconds, cpu_seconds


def state_cost(repeats: int, state_dir: Path) -> dict[str, Any]:
    from benchmarks.program_verify import targets_and_addresses

    addresses, targets, source = targets_and_addresses(923_744, DEFAULT_GEOMETRY)
    runs: dict[str, list[tuple[float, float]]] = {"volatile": [], "state_file": []}
    for repeat in range(repeats):  # alternate which goes first: load swings hit both alike
        order = [None, state_dir] if repeat % 2 == 0 else [state_dir, None]
        for folder in order:
            name = "volatile" if folder is None else "state_file"
            runs[name].append(program_run(addresses, targets, folder))
    result: dict[str, Any] = {
        "devices": int(addresses.size), "chip": DEFAULT_GEOMETRY.n_devices, "targets": source
    }
    for name, measured in runs.items():
        result[f"runs_{name}_s"] = [round(wall, 3) for wall, _ in measured]
        result[f"seconds_{name}"] = round(statistics.median(wall for wall, _ in measured), 3)
        result[f"min_seconds_{name}"] = round(min(wall for wall, _ in measured), 3)
        result[f"cpu_seconds_{name}"] = round(statistics.median(cpu for _, cpu in measured), 3)
    for kind in ("seconds", "min_seconds", "cpu_seconds"):
        ratio = result[f"{kind}_state_file"] / result[f"{kind}_volatile"]
        result[f"ratio_state_over_volatile_{kind}"] = round(ratio, 3)
    return result


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
    parser.add_argument("--repeats", type=int, default=7, help="alternating programming runs")
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
