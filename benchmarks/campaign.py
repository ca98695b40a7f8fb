"""Wall time of a whole 24 h campaign (program + 20 readbacks + drift fit) through the worker.

    python -m benchmarks.campaign --network digits --json benchmarks/results/campaign_digits.json
    python -m benchmarks.campaign --network resnet32 --json benchmarks/results/campaign_resnet32.json

Everything real except the chip: a SQLite file database, the station worker thread,
the simulated chip behind its TCP server. `--clock virtual` lets the worker jump the
board to each due readback (the campaign costs only its work); `--clock accelerated
--rate R` runs board time at R× wall time, so waiting is part of the cost and late or
missed readbacks show up. The ResNet-32 is the shared akamaster checkpoint (923,744
devices); evaluation is off so the numbers are the station's own cost, unless
`--evaluate` asks for one per readout (all test images, every compensation method) to
show whether evaluations delay readbacks (they run in the worker's compute lane).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import torch
from sqlalchemy import Engine, func, select

from benchmarks.common import emit, machine_info
from hwctl import queue
from hwctl.embedded_chip import SimChipOptions, start_embedded_chip
from hwctl.experiment_spec import EvaluationSpec, ExperimentSpec
from hwctl.nn.models import build_model
from hwctl.store.engine import make_engine
from hwctl.store.migrate import upgrade
from hwctl.store.records import add_experiment, add_network, add_station
from hwctl.store.schema import jobs, readouts
from hwctl.vocabulary import JobKind
from hwctl.worker import Worker, WorkerOptions

RESNET32 = "models/resnet32-d509ac18.th"


def shared_dir() -> Path:
    env = os.environ.get("HWCTL_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def add_benchmark_network(engine: Engine, network: str) -> int:
    with engine.begin() as conn:
        if network == "resnet32":
            path = shared_dir() / RESNET32
            if not path.exists():
                raise SystemExit(f"{path} not found: set HWCTL_SHARED_DIR")
            sha = path.name.split("-")[1].split(".")[0]
            return add_network(
                conn, "resnet32", architecture="resnet32", checkpoint_path=str(path), sha256=sha
            )
        buffer = io.BytesIO()
        torch.manual_seed(0)
        torch.save({"arch": "digits-resnet", "state_dict": build_model("digits-resnet").state_dict()}, buffer)
        return add_network(conn, "digits", architecture="digits-resnet", checkpoint=buffer.getvalue())


def count(engine: Engine, kind: str, status: str) -> int:
    with engine.connect() as conn:
        query = select(func.count()).where(jobs.c.kind == kind, jobs.c.status == status)
        return int(conn.execute(query).scalar_one())


def run(network: str, clock: str, rate: float, block_devices: int, evaluate: bool) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="hwctl-bench-"))
    engine = make_engine(f"sqlite:///{workdir / 'hwctl.sqlite'}")
    upgrade(engine)
    chip = start_embedded_chip(SimChipOptions(rate=rate, virtual=clock == "virtual"))
    with engine.begin() as conn:
        station_id = add_station(
            conn, "bench", resource=chip.resource, chip_serial="SIM-0001", geometry=chip.options.geometry,
            amplitude_limit_ua=500.0, clock_kind=clock,
        )  # fmt: skip
    network_id = add_benchmark_network(engine, network)
    dataset = "cifar10" if network == "resnet32" else "digits"
    evaluation = EvaluationSpec(enabled=evaluate, dataset=dataset)
    spec = ExperimentSpec(network_id=network_id, station="bench", evaluation=evaluation)
    with engine.begin() as conn:
        experiment_id = add_experiment(
            conn, "bench", network_id=network_id, station_id=station_id, settings=spec.model_dump()
        )
    queue.enqueue(
        engine, kind=JobKind.PROGRAM, station_id=station_id, run_at_s=0.0, experiment_id=experiment_id,
        payload={"experiment_id": experiment_id},
    )  # fmt: skip
    worker = Worker(engine, "bench", WorkerOptions(poll_s=0.05, read_block_devices=block_devices))
    started = time.perf_counter()
    worker.start()
    marks: dict[str, float] = {}
    n_points = len(spec.schedule.offsets_s)
    while True:
        if worker.error is not None:
            raise worker.error
        if "program_s" not in marks and count(engine, JobKind.PROGRAM, "succeeded"):
            marks["program_s"] = time.perf_counter() - started
        settled = sum(count(engine, JobKind.READBACK, s) for s in ("succeeded", "missed"))
        if "readbacks_s" not in marks and settled == n_points:
            marks["readbacks_s"] = time.perf_counter() - started
        if "analyze_s" not in marks and count(engine, "analyze", "succeeded"):
            marks["analyze_s"] = time.perf_counter() - started
        evaluated = not evaluate or count(engine, "evaluate", "succeeded") == count(
            engine, JobKind.READBACK, "succeeded"
        )
        if "analyze_s" in marks and evaluated:
            marks["evaluations_s"] = time.perf_counter() - started
            break
        time.sleep(0.05)
    worker.stop()
    with engine.connect() as conn:
        rows = conn.execute(select(readouts.c.offset_s, readouts.c.scheduled_s, readouts.c.board_time_s,
                                   readouts.c.g_len)).all()  # fmt: skip
        program = select(jobs.c.result).where(jobs.c.kind == JobKind.PROGRAM)
        program_result = conn.execute(program).scalar_one()
    chip.stop()
    engine.dispose()
    late_s = sorted(r.board_time_s - r.scheduled_s for r in rows)
    return {
        "network": network,
        "n_devices": program_result["n_devices"],
        "clock": clock,
        "rate": rate if clock == "accelerated" else None,
        "block_devices": block_devices,
        "evaluate": evaluate,
        "torch_threads": torch.get_num_threads(),
        "wall_s": {
            "program": marks["program_s"],
            "program_and_readbacks": marks["readbacks_s"],
            "total_with_drift_fit": marks["analyze_s"],
            "total_with_evaluations": marks["evaluations_s"],
        },
        "readouts_stored": len(rows),
        "readbacks_missed": count(engine, JobKind.READBACK, "missed"),
        "max_lateness_board_s": late_s[-1] if late_s else None,
        "median_lateness_board_s": late_s[len(late_s) // 2] if late_s else None,
        "converged_fraction": program_result["converged_fraction"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=("digits", "resnet32"), default="digits")
    parser.add_argument("--clock", choices=("virtual", "accelerated"), default="virtual")
    parser.add_argument("--rate", type=float, default=3600.0)
    parser.add_argument("--block-devices", type=int, default=262_144)
    parser.add_argument("--evaluate", action="store_true", help="evaluate every readout")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = {
        "machine": machine_info(),
        "campaign": run(args.network, args.clock, args.rate, args.block_devices, args.evaluate),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
