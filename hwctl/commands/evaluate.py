"""`hwctl evaluate`: accuracy of a checkpoint from PCM conductances (simulated chip or a readout file).

Torch loads only when the command runs, so `hwctl --help` stays fast; the model name
(--arch) and compensation methods are therefore checked then, with the known ones listed.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from hwctl.commands.errors import CLIError
from hwctl.vocabulary import DEFAULT_GDC_STATISTIC, GDC_STATISTIC_LABELS, CompensationMethod, GdcStatistic

if TYPE_CHECKING:
    from hwctl.mapping import DeviceMap, LayerWeights


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="inference accuracy from PCM conductances")
    p.add_argument("checkpoint")
    p.add_argument("--arch", help="registered model name, for checkpoints that do not name it")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sim-times", help="comma-separated seconds after programming on a simulated chip")
    src.add_argument("--readout", type=Path, help=".npy conductance vector (µS, canonical device order)")
    p.add_argument("--readout-t0", type=Path, help=".npy t0 readout (GDC reference)")
    p.add_argument("--device-map", type=Path, help="DeviceMap bytes; default: re-map the checkpoint")
    p.add_argument("--seed", type=int, default=0, help="simulated chip seed")
    p.add_argument("--method", action="append", help="none, gdc or adabs; repeatable; default: all")
    add_gdc_statistic_argument(p, DEFAULT_GDC_STATISTIC)
    p.add_argument("--images", type=int, help="evaluate on a fixed subset of the test set")
    p.add_argument("--adc-bits", type=int, help="quantize DAC/ADC to this many bits (default ideal)")
    p.set_defaults(func=run)


def add_gdc_statistic_argument(parser: argparse.ArgumentParser, default: str | None) -> None:
    """--gdc-statistic, its help naming each statistic; an unknown one is refused with the known ones."""
    known = "; ".join(f"{s} = {GDC_STATISTIC_LABELS[s]}" for s in GdcStatistic)
    parser.add_argument("--gdc-statistic", choices=[str(s) for s in GdcStatistic], default=default,
                        metavar="STATISTIC", help=f"GDC's per-layer statistic S_l: {known} "
                        f"(default {DEFAULT_GDC_STATISTIC})")  # fmt: skip


def _device_map(args: argparse.Namespace, model_layers: list[LayerWeights]) -> DeviceMap:
    from drivers.sim.board import DEFAULT_GEOMETRY
    from hwctl.mapping import DeviceMap, map_network

    if args.device_map:
        return DeviceMap.from_bytes(args.device_map.read_bytes())
    return map_network(model_layers, DEFAULT_GEOMETRY)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from hwctl.nn.calibration import evaluation_calibration_set
    from hwctl.nn.chip_readout import simulate_readouts
    from hwctl.nn.compensation import AnalogIO, compensation_method
    from hwctl.nn.conductance import export_layers
    from hwctl.nn.data import load_dataset
    from hwctl.nn.evaluation import ReadoutEvaluator
    from hwctl.nn.models import load_checkpoint, model_spec

    methods = [compensation_method(m) for m in args.method] if args.method else list(CompensationMethod)
    ckpt = load_checkpoint(args.checkpoint, args.arch)  # an unknown --arch lists the known ones
    dataset = model_spec(ckpt.arch).dataset
    test = load_dataset(dataset, "test").subset(args.images)
    statistic = GdcStatistic(args.gdc_statistic)
    calib = evaluation_calibration_set(dataset, methods, statistic)
    io = AnalogIO.quantized(args.adc_bits) if args.adc_bits else None
    if args.readout is not None:
        device_map = _device_map(args, export_layers(ckpt.build()))
        g_t = np.load(args.readout, allow_pickle=False)
        g_t0 = np.load(args.readout_t0, allow_pickle=False) if args.readout_t0 else None
        if CompensationMethod.GDC in methods and g_t0 is None:
            raise CLIError("GDC needs --readout-t0")
        readouts = {"readout": (g_t, g_t0)}
    else:
        times = sorted(float(t) for t in args.sim_times.split(","))
        sim = simulate_readouts(ckpt.build(), times, seed=args.seed)
        device_map = sim.device_map
        g0 = sim.g_us_by_time_s[times[0]]
        readouts = {f"{t:g}s": (g, g0) for t, g in sim.g_us_by_time_s.items()}
    evaluator = ReadoutEvaluator(ckpt, device_map, calib, io, gdc_statistic=statistic)
    for label, (g_t, g_t0) in readouts.items():
        for method in methods:
            result = evaluator.evaluate(test, g_t, method, g_t0, seed=args.seed)
            print(json.dumps({"readout": label, **asdict(result), "gdc_statistic": statistic}), flush=True)
    return 0
