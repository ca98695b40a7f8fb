"""Inference accuracy of ResNet-32 programmed on the simulated PCM chip, t0 to 1 year.

For each model (noise-trained and the shared, not noise-trained checkpoint) and each
programming seed: map + program-and-verify on an in-process `SimBoard`, read every
device back at 25 s, 1 h, 1 day, 1 month and 1 year of virtual time, and classify the
test images with no compensation, GDC and AdaBS. Also measures inference from
read-back conductances (rebuild + torch) against plain torch inference of the same
model, and the AdaBS calibration time.

    python -m benchmarks.accuracy --json benchmarks/results/accuracy.json [--quick]

Models not run this time (``--models``) keep their entry from an existing JSON file,
so the two models can be measured in separate runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine_info, write_json
from hwctl.nn.chip_readout import simulate_readouts
from hwctl.nn.compensation import adapt_batchnorm
from hwctl.nn.conductance import load_conductances
from hwctl.nn.data import ImageSet, Normalizer, load_cifar10
from hwctl.nn.evaluation import ReadoutEvaluator, calibration_set
from hwctl.nn.inference import accuracy_pct, predict
from hwctl.nn.models import Checkpoint, load_checkpoint
from hwctl.vocabulary import CompensationMethod

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"
TIMES_S = {"t0": 25.0, "1h": 3600.0, "1d": 86400.0, "1mo": 30 * 86400.0, "1y": 365 * 86400.0}
CHECKPOINTS = {
    "noise_trained": (REPO / "checkpoints" / "resnet32-pcm-eta038.pt", None),
    "baseline": (SHARED_MODELS / "resnet32-d509ac18.th", "resnet32"),
}
QUICK_CHECKPOINTS = {"baseline": (SHARED_MODELS / "resnet20-12fca82f.th", "resnet20")}


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def model_accuracy(ckpt: Checkpoint, test: ImageSet, calib: ImageSet, seeds: list[int]) -> dict[str, Any]:
    """FP accuracy and per time/method mean ± std over programming seeds."""
    scores: dict[str, dict[str, list[float]]] = {t: {m: [] for m in CompensationMethod} for t in TIMES_S}
    converged = []
    for seed in seeds:
        readouts = simulate_readouts(ckpt.build(), list(TIMES_S.values()), seed=seed)
        converged.append(readouts.program.converged_fraction_nonzero)
        evaluator = ReadoutEvaluator(ckpt, readouts.device_map, calib)
        g_t0 = readouts.g_us_by_time_s[TIMES_S["t0"]]
        for label, t_s in TIMES_S.items():
            for method in CompensationMethod:
                res = evaluator.evaluate(test, readouts.g_us_by_time_s[t_s], method, g_t0, seed=seed)
                scores[label][method].append(res.accuracy)
                print(f"  seed {seed} {label:>3} {method:<5} {res.accuracy:6.2f} %", flush=True)
    out: dict[str, Any] = {
        "arch": ckpt.arch,
        "fp_accuracy": accuracy_pct(ckpt.build(), test, Normalizer(ckpt.arch)),
        "pv_converged_fraction_nonzero": mean_std(converged),
    }
    for label in TIMES_S:
        out[label] = {f"acc_{m}": mean_std(scores[label][m]) for m in CompensationMethod}
    return out


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
        "plain_inference_s": min(plain_s), "readout_inference_s": min(readout_s),
        "inference_ratio_vs_digital": min(readout_s) / min(plain_s),
        "adabs_calibration_s": min(adabs_s), "timing_images": len(test),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="ResNet-20 baseline, 2,000 images (≤ 5 min)")
    parser.add_argument("--models", default="noise_trained,baseline")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--images", type=int, help="fixed test subset (default: all 10,000; 2,000 quick)")
    parser.add_argument("--threads", type=int, default=1)
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
        result["models"][name] = model_accuracy(ckpt, test, calib, seeds)
        result["models"][name].update(checkpoint=path.name, wall_s=time.perf_counter() - start,
                                      seeds=seeds)  # fmt: skip
    ckpt = load_checkpoint(*table[names[0]])
    result.update(timing(ckpt, test, calib))
    result.update(
        times_s=TIMES_S, n_test_images=len(test), calibration_images=len(calib), quick=args.quick,
        data="shared CIFAR-10 npz (JPEG-derived: compare accuracies only with each other)",
        machine=machine_info(torch=torch.__version__, torch_threads=args.threads),
    )
    write_json(result, args.json)
    print(json.dumps({k: v for k, v in result.items() if k != "models"}, indent=2))


if __name__ == "__main__":
    main()
