"""Re-fit the simulator's relaxation noise σ_relax(G) so programmed devices land on σ_prog at t0.

    python -m benchmarks.calibrate_relaxation --devices 300000 [--json FILE]

Why (see `PCMModel` in drivers/pcm_model.py and docs/pcm-model.md §10.3): the spread at t0 is the
verify residual of the project's own program-and-verify, combined in quadrature with
the relaxation drawn between the last pulse and t0, σ_prog² = σ_resid² + σ_relax². This
programs targets uniform over (0, G_max] with default `ProgramSettings`, measures
σ_resid = std(G_state − G_T) per target bin, fits c0 + c1·x + c2·x² (x = G_T/G_max) to
sqrt(σ_prog² − σ_resid²) by least squares, then checks the fit: with it, the noise-free
G(t0) − G_T spread over σ_prog per 2.5 µS bin should be ≈ 1. Paste the printed
coefficients into `PCMModel.relax_noise_coeffs_us` when the settings or SET physics change.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from drivers.base import Geometry
from drivers.pcm_model import PCMModel
from drivers.sim.board import SimBoard
from hwctl.program_verify import program_and_verify

FIT_BIN_US = 0.5
CHECK_BINS_US = np.arange(0.0, 27.5, 2.5)
MIN_PER_BIN = 100


def per_bin(
    values: npt.NDArray[np.floating], targets_us: npt.NDArray[np.floating], edges_us: npt.NDArray[np.floating]
) -> list[tuple[float, float, float]]:
    """(bin centre, RMS of the bin's σ_prog, std of `values`) for every bin with enough devices."""
    model = PCMModel()
    rows = []
    for lo, hi in itertools.pairwise(edges_us):
        inside = (targets_us > lo) & (targets_us <= hi)
        if inside.sum() >= MIN_PER_BIN:
            sigma_prog = math.sqrt(float(np.mean(model.sigma_prog_us(targets_us[inside]) ** 2)))
            rows.append(((lo + hi) / 2, sigma_prog, float(values[inside].std())))
    return rows


def fit_relaxation(rows: list[tuple[float, float, float]], g_max_us: float) -> tuple[float, float, float]:
    """Least-squares quadratic in x = G/G_max through sqrt(σ_prog² − σ_resid²) per bin."""
    x = np.array([centre for centre, _, _ in rows]) / g_max_us
    needed = np.sqrt(np.maximum([prog**2 - resid**2 for _, prog, resid in rows], 0.0))
    c2, c1, c0 = np.polyfit(x, needed, 2)
    return round(float(c0), 4), round(float(c1), 4), round(float(c2), 4)


@dataclass(frozen=True)
class Calibration:
    devices: int
    seed: int
    converged_fraction: float
    sigma_resid_us_by_bin: list[tuple[float, float]]  # (bin centre µS, σ_resid µS), 0.5 µS bins
    relax_noise_coeffs_us: tuple[float, float, float]  # the fit
    current_relax_noise_coeffs_us: tuple[float, float, float]  # PCMModel's default
    sigma_t0_over_prog_with_fit: list[tuple[float, float]]  # (bin centre µS, ratio), 2.5 µS bins
    sigma_t0_over_prog_with_current: list[tuple[float, float]]


def calibrate(n_devices: int, seed: int) -> Calibration:
    model = PCMModel()
    board = SimBoard(Geometry(1, n_devices, 1), model, seed=seed)
    rng = np.random.default_rng(seed)
    targets_us = rng.uniform(0.0, model.g_max_us, n_devices).astype(np.float32)
    targets_us[targets_us == 0] = model.g_max_us  # uniform over (0, G_max]: every device SET
    addresses = np.arange(n_devices, dtype=np.uint32)
    result = program_and_verify(board, addresses, targets_us)
    residual_us = board.array.g_state_us[addresses] - targets_us
    fit_rows = per_bin(residual_us, targets_us, np.arange(0.0, model.g_max_us + FIT_BIN_US, FIT_BIN_US))
    coeffs, current = fit_relaxation(fit_rows, model.g_max_us), model.relax_noise_coeffs_us
    return Calibration(
        devices=n_devices, seed=seed, converged_fraction=round(result.converged_fraction_nonzero, 4),
        sigma_resid_us_by_bin=[(round(c, 2), round(r, 4)) for c, _, r in fit_rows],
        relax_noise_coeffs_us=coeffs, current_relax_noise_coeffs_us=current,
        sigma_t0_over_prog_with_fit=spread_at_t0(board, addresses, targets_us, coeffs),
        sigma_t0_over_prog_with_current=spread_at_t0(board, addresses, targets_us, current),
    )  # fmt: skip


def spread_at_t0(
    board: SimBoard, addresses: npt.NDArray[np.uint32], targets_us: npt.NDArray[np.float32],
    relax_coeffs_us: tuple[float, float, float],
) -> list[tuple[float, float]]:
    """σ(G(t0) − G_T) / σ_prog per 2.5 µS bin if relaxation followed `relax_coeffs_us`.

    Relaxation is drawn lazily at a device's first aged read, so a copy of the freshly
    programmed board, given the law before its clock passes t0, shows that law's outcome.
    """
    trial = copy.deepcopy(board.array, memo={id(board.clock): board.clock})
    trial.model = replace(trial.model, relax_noise_coeffs_us=relax_coeffs_us)
    t0_board_s = board.clock.now_s() + trial.model.t0_s
    error_t0_us = trial.conductance_us(addresses, now_s=t0_board_s) - targets_us
    return [(round(c, 2), round(s / p, 3)) for c, p, s in per_bin(error_t0_us, targets_us, CHECK_BINS_US)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    found = calibrate(args.devices, args.seed)
    print(f"converged (non-zero targets): {found.converged_fraction}")
    print(f"fitted relax_noise_coeffs_us  = {found.relax_noise_coeffs_us}")
    print(f"current relax_noise_coeffs_us = {found.current_relax_noise_coeffs_us}")
    print("σ(G(t0) − G_T) / σ_prog per 2.5 µS bin: bin centre, with the fit, with the current coefficients")
    pairs = zip(found.sigma_t0_over_prog_with_fit, found.sigma_t0_over_prog_with_current, strict=True)
    for (centre, with_fit), (_, with_current) in pairs:
        print(f"  {centre:5.2f} µS  {with_fit:.3f}  {with_current:.3f}")
    if args.json:
        args.json.write_text(json.dumps(asdict(found), indent=2) + "\n")


if __name__ == "__main__":
    main()
