"""Program-and-verify throughput and outcome statistics, in process and over pyvisa TCP.

    python -m benchmarks.program_verify --devices 923744 --json benchmarks/results/program_verify.json

In-process and pyvisa TCP runs alternate `--repeats` times (medians reported), so a
shared machine's load swings hit both sides of the wire-overhead ratio alike.

Targets come from the ResNet-32 checkpoint through `hwctl.mapping` when the shared
models folder is found (../shared relative to the repo, or $HWCTL_SHARED_DIR);
otherwise from a documented synthetic stand-in: |N(0, 1)| weights, half of them
negative, i.e. a half-normal target distribution with ~1/2 of the devices RESET,
as in a mapped network.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import emit, machine_info
from drivers.base import Geometry
from drivers.pcm_model import PCMModel
from drivers.sim.board import DEFAULT_GEOMETRY, SimBoard
from hwctl.mapping import LayerWeights, map_network
from hwctl.program_verify import ProgrammingResult, program_and_verify

RESNET32 = "models/resnet32-d509ac18.th"
BINS_US = np.arange(0.0, 27.5, 2.5)
VISA_NOTE = "ChipDriver + VisaTransport (pyvisa-py) over TCP to the simulated chip server on 127.0.0.1"


def shared_dir() -> Path:
    env = os.environ.get("HWCTL_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def resnet32_layers(path: Path) -> list[LayerWeights]:
    """The checkpoint's analog weights, unrolled exactly as the network pipeline maps them."""
    from hwctl.nn.conductance import export_layers  # torch: only the checkpoint path needs it
    from hwctl.nn.models import load_checkpoint

    return export_layers(load_checkpoint(path, "resnet32").build())


def targets_and_addresses(n_devices: int, geometry: Geometry) -> tuple[np.ndarray, np.ndarray, str]:
    checkpoint = shared_dir() / RESNET32
    if checkpoint.exists():
        dmap = map_network(resnet32_layers(checkpoint), geometry)
        if n_devices > dmap.n_devices:
            raise SystemExit(f"--devices {n_devices} exceeds the mapped network ({dmap.n_devices})")
        source = f"resnet32 mapped ({checkpoint.name})"
        return dmap.addresses[:n_devices], dmap.target_g_us[:n_devices], source
    rng = np.random.default_rng(0)
    w = rng.standard_normal(n_devices // 2)
    targets = np.concatenate([np.maximum(w, 0), np.maximum(-w, 0)]) * 25.0 / np.abs(w).max()
    targets = np.resize(targets, n_devices).astype(np.float32)
    return np.arange(n_devices, dtype=np.uint32), targets, "synthetic half-normal (checkpoint absent)"


def sigma_ratios(board: SimBoard, result: ProgrammingResult) -> tuple[list[float | None], float]:
    """Measured/model σ at t0 per 2.5 µS bin (mean of 16 reads), and the worst |bias|."""
    model: PCMModel = board.array.model
    board.clock.advance(model.t0_s)
    g_t0 = np.mean([board.read_block(result.addresses) for _ in range(16)], axis=0)
    error = g_t0 - result.target_g_us
    nonzero = result.target_g_us > 0
    ratios: list[float | None] = []
    biases = [abs(float(error[nonzero].mean()))]
    for lo, hi in itertools.pairwise(BINS_US):
        in_bin = nonzero & (result.target_g_us >= lo) & (result.target_g_us < hi)
        if in_bin.sum() < 100:
            ratios.append(None)
            continue
        expected = np.sqrt(np.mean(model.sigma_prog_us(result.target_g_us[in_bin]) ** 2))
        ratios.append(round(float(error[in_bin].std() / expected), 4))
        biases.append(abs(float(error[in_bin].mean())))
    return ratios, max(biases)


def run_inprocess(addresses: np.ndarray, targets: np.ndarray) -> tuple[float, SimBoard, ProgrammingResult]:
    board = SimBoard(seed=1)
    start = time.perf_counter()
    result = program_and_verify(board, addresses, targets)
    return time.perf_counter() - start, board, result


def run_visa(addresses: np.ndarray, targets: np.ndarray) -> float:
    from drivers.chip import ChipDriver
    from drivers.sim.server import serve_in_thread
    from drivers.transports.visa import VisaTransport

    server = serve_in_thread(SimBoard(seed=1))
    try:
        with ChipDriver(VisaTransport(server.resource, timeout_s=60.0)) as chip:
            start = time.perf_counter()
            program_and_verify(chip, addresses, targets)
            return time.perf_counter() - start
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=923_744)
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--no-visa", action="store_true", help="skip the pyvisa TCP runs")
    parser.add_argument("--repeats", type=int, default=3, help="alternating in-process/visa runs")
    args = parser.parse_args()

    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    addresses, targets, source = targets_and_addresses(args.devices, DEFAULT_GEOMETRY)
    load_before = os.getloadavg()
    seconds, board, result = run_inprocess(addresses, targets)
    ratios, bias_max = sigma_ratios(board, result)
    runs_inprocess = [seconds]
    runs_visa = [] if args.no_visa else [run_visa(addresses, targets)]
    for _ in range(args.repeats - 1):
        runs_inprocess.append(run_inprocess(addresses, targets)[0])
        runs_visa += [] if args.no_visa else [run_visa(addresses, targets)]
    seconds_inprocess = statistics.median(runs_inprocess)
    seconds_visa = statistics.median(runs_visa) if runs_visa else None

    report = {
        "devices": int(addresses.size),
        "targets": source,
        "seconds_inprocess": round(seconds_inprocess, 3),
        "seconds_visa": None if seconds_visa is None else round(seconds_visa, 3),
        "runs_inprocess": [round(s, 3) for s in runs_inprocess],
        "runs_visa": [round(s, 3) for s in runs_visa],
        "visa_note": "skipped (--no-visa)" if args.no_visa else VISA_NOTE,
        "wire_overhead_ratio": None if seconds_visa is None else round(seconds_visa / seconds_inprocess, 2),
        "target_wire_overhead_ratio": 2.0,
        "target_seconds_inprocess": 3.0,
        "target_seconds_visa": 6.0,
        "devices_per_second_inprocess": round(addresses.size / seconds_inprocess),
        "iterations_mean": round(result.iterations_mean, 3),
        "iterations_mean_nonzero": round(float(result.iterations[targets > 0].mean()), 3),
        "iterations_max": int(result.iterations.max()),
        "converged_fraction_nonzero": round(result.converged_fraction_nonzero, 5),
        "nonzero_fraction": round(float(np.mean(targets > 0)), 4),
        "sigma_ratio_by_bin": dict(zip([f"{lo:g}-{lo + 2.5:g}" for lo in BINS_US[:-1]], ratios, strict=True)),
        "bias_us_max": round(bias_max, 4),
        "machine": machine_info(
            numpy=np.__version__, load_average_1min_before=round(load_before[0], 2)
        ),
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
