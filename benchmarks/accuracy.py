"""Inference accuracy of ResNet-32 programmed on the simulated PCM chip, t0 to 1 year.

For each model (noise-trained and the shared, not noise-trained checkpoint) and each
programming seed: map + program-and-verify on an in-process `SimBoard`, read every
device back `--draws` times (fresh read noise, same drift) at 25 s, 1 h, 1 day, 1 month
and 1 year of virtual time, and classify the test images from every read with no
compensation, GDC (the default statistic; at 1 day and 1 year every statistic) and
AdaBS. GDC's reference is the mean of the t0 reads. Every accuracy is given as the mean
with its spread over programming seeds and over read draws, and the number of each.
Also measures inference from read-back conductances (rebuild + torch) against plain
torch inference of the same model, and the AdaBS calibration time.

    python -m benchmarks.accuracy --json benchmarks/results/accuracy.json [--quick]

Models not run this time (``--models``) keep their entry from an existing JSON file,
so the two models can be measured in separate runs; the file is rewritten after every
seed (entries marked `"partial": true` until a model's last seed).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from benchmarks.common import machine_info, write_json
from hwctl.nn.chip_readout import simulate_readouts
from hwctl.nn.compensation import adapt_batchnorm
from hwctl.nn.conductance import load_conductances
from hwctl.nn.data import ImageSet, Normalizer, load_cifar10
from hwctl.nn.evaluation import ReadoutEvaluator, calibration_set
from hwctl.nn.inference import accuracy_pct, predict
from hwctl.nn.models import Checkpoint, load_checkpoint
from hwctl.vocabulary import DEFAULT_GDC_STATISTIC, CompensationMethod, GdcStatistic

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"
TIMES_S = {"t0": 25.0, "1h": 3600.0, "1d": 86400.0, "1mo": 30 * 86400.0, "1y": 365 * 86400.0}
CHECKPOINTS = {
    "noise_trained": (REPO / "checkpoints" / "resnet32-pcm-k125.pt", None),
    "baseline": (SHARED_MODELS / "resnet32-d509ac18.th", "resnet32"),
}
QUICK_CHECKPOINTS = {"baseline": (SHARED_MODELS / "resnet20-12fca82f.th", "resnet20")}


GDC_STATISTICS_COMPARED_AT = ("1d", "1y")  # every GDC statistic there; the default elsewhere


def spread(values: list[list[float]]) -> dict[str, Any]:
    """Mean, spread over programming seeds (std of the per-seed means) and over read draws
    (pooled within-seed std), with the number of each; `values[seed][draw]`."""
    seed_means = [statistics.fmean(v) for v in values]
    within = [statistics.variance(v) for v in values if len(v) > 1]
    return {
        "mean": statistics.fmean(seed_means),
        "std": statistics.stdev(seed_means) if len(seed_means) > 1 else None,  # over seeds
        "std_draws": math.sqrt(statistics.fmean(within)) if within else None,
        "n_seeds": len(values), "n_draws": len(values[0]), "values": values,
    }  # fmt: skip


def evaluations(
    label: str, compared: list[GdcStatistic]
) -> list[tuple[str, CompensationMethod, GdcStatistic]]:
    """(result key, method, GDC statistic) evaluated at time `label`."""
    keys = [(f"acc_{m}", CompensationMethod(m), DEFAULT_GDC_STATISTIC) for m in CompensationMethod]
    if label in GDC_STATISTICS_COMPARED_AT:
        keys += [(f"acc_gdc_{s}", CompensationMethod.GDC, s) for s in compared]
    return keys


def model_accuracy(
    ckpt: Checkpoint,
    test: ImageSet,
    calib: ImageSet,
    seeds: list[int],
    draws: int,
    compared: list[GdcStatistic],
    keep: Callable[[dict[str, Any]], None],
) -> None:
    """FP accuracy and, per time and evaluation, mean with its spread over seeds and draws,
    handed to `keep` after every seed."""
    scores: dict[str, dict[str, list[list[float]]]] = {t: {} for t in TIMES_S}
    converged = []
    out: dict[str, Any] = {
        "arch": ckpt.arch, "fp_accuracy": accuracy_pct(ckpt.build(), test, Normalizer(ckpt.arch)),
        "gdc_statistic_default": str(DEFAULT_GDC_STATISTIC), "gdc_reference": f"mean of the {draws} t0 reads",
    }  # fmt: skip
    for seed in seeds:
        readouts = simulate_readouts(ckpt.build(), list(TIMES_S.values()), seed=seed, reads_per_time=draws)
        converged.append(readouts.program.converged_fraction_nonzero)
        evaluators: dict[GdcStatistic, ReadoutEvaluator] = {}
        t0_reads = readouts.draws_by_time_s[TIMES_S["t0"]]
        g_t0: npt.NDArray[np.float32] = np.mean(t0_reads, axis=0).astype(np.float32)
        for label, t_s in TIMES_S.items():
            for key, method, statistic in evaluations(label, compared):
                if statistic not in evaluators:
                    evaluators[statistic] = ReadoutEvaluator(
                        ckpt, readouts.device_map, calib, gdc_statistic=statistic
                    )
                evaluator = evaluators[statistic]
                found = []
                for draw, g in enumerate(readouts.draws_by_time_s[t_s]):
                    found.append(evaluator.evaluate(test, g, method, g_t0, seed=seed).accuracy)
                    print(f"  seed {seed} {label:>3} {key:<26} draw {draw} {found[-1]:6.2f} %", flush=True)
                scores[label].setdefault(key, []).append(found)
        out["pv_converged_fraction_nonzero"] = spread([[c] for c in converged])
        for label in TIMES_S:
            out[label] = {key: spread(values) for key, values in scores[label].items()}
        keep({**out, "partial": seed != seeds[-1], "seeds": seeds[: len(converged)]})


def timing(ckpt: Checkpoint, test: ImageSet, calib: ImageSet, repeats: int = 3) -> dict[str, float]:
    """Readout inference (rebuild weights from G + torch) vs plain torch, interleaved; AdaBS time."""
    readouts = simulate_readouts(ckpt.build(), [TIMES_S["t0"]], seed=0)
    g = readouts.g_us_by_time_s[TIMES_S["t0"]]
    digital, analog = ckpt.build(), ckpt.build()
    norm = Normalizer(ckpt.arch)
    plain_s, readout_s, adabs_s = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(digital, test, norm)
        plain_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        load_conductances(analog, readouts.device_map, g)
        predict(analog, test, norm)
        readout_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        adapt_batchnorm(analog, norm(calib.x))
        adabs_s.append(time.perf_counter() - start)
    return {
        "plain_inference_s": min(plain_s),
        "readout_inference_s": min(readout_s),
        "inference_ratio_vs_digital": min(readout_s) / min(plain_s),
        "adabs_calibration_s": min(adabs_s),
        "timing_images": len(test),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="ResNet-20 baseline, 2,000 images (≤ 5 min)")
    parser.add_argument("--models", default="noise_trained,baseline")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--images", type=int, help="fixed test subset (default: all 10,000; 2,000 quick)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--draws", type=int, default=3, help="reads of the programmed chip at each time")
    parser.add_argument("--gdc-statistics", default=",".join(GdcStatistic),
                        help="GDC statistics compared at 1 day and 1 year (default: all)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    table = QUICK_CHECKPOINTS if args.quick else CHECKPOINTS
    names = [n for n in args.models.split(",") if n in table]
    test = load_cifar10("test").subset(args.images or (2000 if args.quick else None), seed=0)
    calib = calibration_set(load_cifar10("train"), "cifar10", seed=0)
    result: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
    result.setdefault("models", {})
    for name in names:
        path, arch = table[name]
        ckpt = load_checkpoint(path, arch)
        print(f"{name}: {path.name} ({ckpt.arch})", flush=True)
        start = time.perf_counter()

        def keep(entry: dict[str, Any], name: str = name, path: Path = path, start: float = start) -> None:
            entry.update(checkpoint=path.name, wall_s=time.perf_counter() - start)
            result["models"][name] = entry
            write_json(result, args.json)

        compared = [GdcStatistic(s) for s in args.gdc_statistics.split(",")]
        model_accuracy(ckpt, test, calib, seeds, args.draws, compared, keep)
    ckpt = load_checkpoint(*table[names[0]])
    result.update(timing(ckpt, test, calib))
    result.update(
        times_s=TIMES_S,
        n_test_images=len(test),
        calibration_images=len(calib),
        quick=args.quick,
        read_draws=args.draws,
        data="shared CIFAR-10 npz (JPEG-derived: compare accuracies only with each other)",
        machine=machine_info(torch=torch.__version__, torch_threads=args.threads),
    )
    write_json(result, args.json)
    print(json.dumps({k: v for k, v in result.items() if k != "models"}, indent=2))


if __name__ == "__main__":
    main()
