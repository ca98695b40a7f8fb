"""`hwctl evaluate`: accuracy of a checkpoint from PCM conductances (simulated chip or a readout file),
on a built-in test set or a stored data set (`--test-dataset ID`, loaded as the evaluate job loads it).

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
    from sqlalchemy import Connection

    from hwctl.experiment_spec import EvaluationSpec
    from hwctl.mapping import DeviceMap, LayerWeights
    from hwctl.nn.evaluation import Images


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
    p.add_argument("--test-dataset", metavar="ID|NAME", help="the test set: a data set's id (GET "
                   "/datasets; from the database) or digits/cifar10; default: the network's")  # fmt: skip
    p.add_argument("--calibration-dataset", type=int, metavar="ID", help="AdaBS's calibration images: a data "
                   "set's id, used as is; default: the built-in test set's training split")  # fmt: skip
    p.add_argument("--database-url", help="SQLAlchemy URL for data set ids (default: HWCTL_DATABASE_URL)")
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


def _evaluation_images(args: argparse.Namespace, evaluation: EvaluationSpec) -> tuple[Images, Images | None]:
    """The test and calibration images, as the evaluate job loads them; the database is
    opened only for a data set named by id."""
    from hwctl.settings import get_settings
    from hwctl.store.datasets import evaluation_calibration_images, evaluation_test_images
    from hwctl.store.engine import connect, make_engine
    from hwctl.store.errors import StoreError
    from hwctl.store.migrate import ensure_migrated

    def load(conn: Connection | None) -> tuple[Images, Images | None]:
        return evaluation_test_images(conn, evaluation), evaluation_calibration_images(conn, evaluation)

    try:
        if evaluation.test_dataset_id is None and evaluation.calibration_dataset_id is None:
            return load(None)
        engine = make_engine(args.database_url or get_settings().database_url)
        try:
            ensure_migrated(engine)
            with connect(engine) as conn:
                return load(conn)
        finally:
            engine.dispose()
    except (StoreError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from hwctl.experiment_spec import DATASET_IMAGE_SHAPES, EvaluationSpec
    from hwctl.nn.chip_readout import simulate_readouts
    from hwctl.nn.compensation import AnalogIO, compensation_method
    from hwctl.nn.conductance import export_layers
    from hwctl.nn.evaluation import ReadoutEvaluator
    from hwctl.nn.models import load_checkpoint
    from hwctl.nn.network_spec import network_spec

    methods = [compensation_method(m) for m in args.method] if args.method else list(CompensationMethod)
    ckpt = load_checkpoint(args.checkpoint, args.arch)  # an unknown --arch lists the known ones
    statistic = GdcStatistic(args.gdc_statistic)
    ref = args.test_dataset or network_spec(ckpt).dataset
    if ref is None:
        raise CLIError("the network has no data set of its own: give --test-dataset")
    by_id = ref.isdigit()
    if not by_id and ref not in DATASET_IMAGE_SHAPES:
        names = ", ".join(DATASET_IMAGE_SHAPES)
        raise CLIError(f"--test-dataset {ref!r}: give a data set id or a built-in's name ({names})")
    evaluation = EvaluationSpec.model_validate({
        "methods": methods, "n_images": args.images, "gdc_statistic": statistic,
        "dataset": None if by_id else ref, "test_dataset_id": int(ref) if by_id else None,
        "calibration_dataset_id": args.calibration_dataset,
    })  # fmt: skip
    test, calib = _evaluation_images(args, evaluation)
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
