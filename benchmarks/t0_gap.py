"""FP − t0 of noise-trained checkpoints: the paper's first target, for choosing a fine-tune.

For each checkpoint: its FP accuracy, then per programming seed one programming on an
in-process `SimBoard` and `--draws` reads of every device at 25 s, each classified
without compensation. Cheaper than `benchmarks.accuracy` (one time, one method), so a
series of fine-tunes can be compared in one run (checkpoints/README.md's table).

    python -m benchmarks.t0_gap checkpoints/resnet32-pcm-k125.pt OTHER.pt --json FILE
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.accuracy import spread
from benchmarks.common import emit, machine_info
from hwctl.nn.chip_readout import simulate_readouts
from hwctl.nn.data import ImageSet, Normalizer, load_cifar10
from hwctl.nn.evaluation import ReadoutEvaluator
from hwctl.nn.inference import accuracy_pct
from hwctl.nn.models import load_checkpoint
from hwctl.vocabulary import CompensationMethod

T0_S = 25.0


def t0_gap(path: Path, test: ImageSet, seeds: list[int], draws: int) -> dict[str, Any]:
    """FP accuracy, the t0 accuracies `values[seed][draw]` with their spread, and FP − mean t0."""
    ckpt = load_checkpoint(path)
    fp = accuracy_pct(ckpt.build(), test, Normalizer(ckpt.arch))
    values = []
    for seed in seeds:
        readouts = simulate_readouts(ckpt.build(), [T0_S], seed=seed, reads_per_time=draws)
        evaluator = ReadoutEvaluator(ckpt, readouts.device_map)
        values.append([evaluator.evaluate(test, g_us, CompensationMethod.NONE).accuracy
                       for g_us in readouts.draws_by_time_s[T0_S]])  # fmt: skip
        print(f"{path.name}: FP {fp:.2f} %, seed {seed}: t0 {values[-1]} %", flush=True)
    t0 = spread(values)
    return {"checkpoint": path.name, "recipe": ckpt.meta.get("recipe"), "fp_accuracy": fp,
            "t0_none": t0, "fp_minus_t0_pt": fp - t0["mean"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--draws", type=int, default=2, help="reads of each programming at 25 s")
    parser.add_argument("--images", type=int, help="fixed test subset (default: all 10,000)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test = load_cifar10("test").subset(args.images, seed=0)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    results = [t0_gap(path, test, seeds, args.draws) for path in args.checkpoints]
    emit({"benchmark": "t0_gap", "images": len(test), "seeds": seeds, "draws": args.draws,
          "results": results, "wall_s": time.perf_counter() - started,
          "machine": machine_info(torch=torch.__version__, threads=args.threads)}, args.json)  # fmt: skip


if __name__ == "__main__":
    main()
