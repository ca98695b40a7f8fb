"""Per-device drift fit on a whole chip: 923,744 devices × 20 readouts.

The vectorized closed-form fit (`hwctl.analysis.drift.fit_drift`) against a naive
per-device `np.polyfit` loop measured on a sample in the same run and scaled to the
chip. Data: the model equations (pcm-model.md §2–§4), seeded, each device with its
own programming time.

    python -m benchmarks.drift_fit --json benchmarks/results/drift_fit.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import emit, machine_info
from drivers.pcm_model import PCMModel
from hwctl.analysis.drift import fit_drift
from hwctl.analysis.synthetic import synthetic_readouts
from hwctl.schedule import log_spaced_offsets_s

N_DEVICES = 923_744  # ResNet-32 (461,872 weights) on differential pairs
N_READOUTS = 20
NAIVE_SAMPLE = 5_000


def naive_fit_s(g_us: np.ndarray, t_s: np.ndarray, t0_s: float) -> float:
    """Seconds for one np.polyfit per device over the first NAIVE_SAMPLE devices."""
    start = time.perf_counter()
    for i in range(NAIVE_SAMPLE):
        keep = g_us[:, i] > 0
        if keep.sum() >= 3:
            np.polyfit(np.log(t_s[keep, i] / t0_s), np.log(g_us[keep, i]), 1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = PCMModel()
    target = np.random.default_rng(0).uniform(0.0, model.g_max_us, N_DEVICES)
    target[::3] = 0.0  # a differential pair has one RESET device per weight
    data = synthetic_readouts(
        target, log_spaced_offsets_s(points=N_READOUTS), model, seed=1, programming_spread_s=600.0
    )
    times_s = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fit = fit_drift(data.g_us, data.t_s, t0_s=model.t0_s)
        times_s.append(time.perf_counter() - start)
    vectorized_s = statistics.median(times_s)
    naive_s = naive_fit_s(data.g_us, data.t_s, model.t0_s) * N_DEVICES / NAIVE_SAMPLE
    programmed = fit.ok & (target > 0)
    result = {
        "benchmark": "drift_fit",
        "n_devices": N_DEVICES,
        "n_readouts": N_READOUTS,
        "times_shape": list(data.t_s.shape),
        "vectorized_fit_s_median": round(vectorized_s, 3),
        "vectorized_fit_s_all": [round(t, 3) for t in times_s],
        "naive_polyfit_loop_s_scaled": round(naive_s, 1),
        "naive_sample_devices": NAIVE_SAMPLE,
        "speedup": round(naive_s / vectorized_s, 1),
        "devices_fitted": int(fit.ok.sum()),
        "nu_mean_abs_error_programmed": round(float(np.mean(np.abs(fit.nu - data.nu)[programmed])), 5),
        "machine": machine_info(numpy=np.__version__),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
