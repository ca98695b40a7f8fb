"""Inference jobs: what the queue adds, what analog inference costs beside plain torch, and
a fresh read of a ResNet-32-sized network plus 1,000 images.

    python -m benchmarks.inference --json benchmarks/results/inference.json

Everything real except the chip: a SQLite file database, the API under uvicorn on a real
port (httpx client), the station worker (its default poll interval unless --poll-s), the
simulated chip behind its TCP server reached over pyvisa, the shared ResNet-32
(923,744 devices) programmed by program-and-verify and read back once (25 s).

- `ratio_10k_vs_torch`: the compute core on all 10,000 CIFAR-10 test images from the
  stored readout (weights rebuilt from conductances, then plain inference) over plain
  torch inference of the same model on the same inputs; `_analog_io_`: with 8-bit DAC
  and ADC and per-MVM output noise (σ = 2 % of the output range). Rounds interleave the
  three so machine load hits all alike; each ratio is of the fastest rounds (min/min),
  the median of per-round ratios is recorded too, and `_cpu` the ratios of this process's
  CPU seconds (the service's other threads are idle meanwhile), less disturbed by load.
- `queue_overhead_ms_p50`: one image at the stored readout through the API (submit →
  the job's `end` event on its SSE stream) minus the in-process time of the same
  inference (rebuild + one image), median over `--queue-runs` after one warm-up job; then
  again with the worker polling every 50 ms (`_poll_50ms`), to tell its poll from the rest.
- `now_read_infer_1000_s`: `at=now` (a fresh read of all 923,744 devices over TCP,
  stored as a readout, rebuild, 1,000 images), submit → end event, median of 3.
- `export_vs_native_*`: the same checkpoint re-exported with `hwctl export` (a `.pt2`,
  read back as data and run as `ExportedModule`) against the native model, both rebuilt
  from the stored readout, on the 10,000 images in interleaved rounds: the accuracy
  difference in points and the time ratio (min/min wall; CPU beside it).

`--parts` measures some of these only; with `--merge` their keys replace those in the
existing `--json` file and the rest is kept (`parts_measured` says which run gave which).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from sqlalchemy import Engine

from api.app import create_app
from api.server import BackgroundServer
from benchmarks.campaign import shared_dir
from benchmarks.common import emit, machine_info
from drivers.base import Geometry
from hwctl.cli import main as hwctl_cli
from hwctl.embedded_chip import SimChipOptions, start_embedded_chip
from hwctl.inference.inputs import Inputs, Normalisation
from hwctl.inference.run import ChipNetwork, InferenceSettings, forward
from hwctl.mapping import DeviceMap
from hwctl.nn.compensation import AnalogIO
from hwctl.nn.data import ImageSet, load_cifar10
from hwctl.nn.models import Checkpoint, load_checkpoint, save_checkpoint
from hwctl.settings import Settings
from hwctl.store import readouts as store_readouts
from hwctl.store.engine import make_engine
from hwctl.store.migrate import upgrade
from hwctl.worker import Worker, WorkerOptions

RESNET32 = "models/resnet32-d509ac18.th"
ANALOG_IO = AnalogIO(dac_bits=8, adc_bits=8, output_noise_rel=0.02)
CIFAR10_BUILTIN = 2
FAST_POLL_S = 0.05
PARTS = ("core", "queue", "api", "export")


def _events_end(client: httpx.Client, job_id: int) -> dict[str, Any]:
    """Block on the job's SSE stream until its `end` event; the job as it ended."""
    name = ""
    with client.stream("GET", f"/jobs/{job_id}/events") as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: ") and name == "end":
                job: dict[str, Any] = json.loads(line.removeprefix("data: "))
                return job
    raise RuntimeError(f"job {job_id}: the event stream ended without an end event")


def _submit_and_wait(
    client: httpx.Client, experiment_id: int, spec: dict[str, Any]
) -> tuple[float, int, dict[str, Any]]:
    """Wall seconds from submission to the job's end event, the inference's id, the job's result."""
    start = time.perf_counter()
    accepted = client.post(f"/experiments/{experiment_id}/inferences", json=spec)
    accepted.raise_for_status()
    job = _events_end(client, accepted.json()["job"]["id"])
    elapsed = time.perf_counter() - start
    if job["status"] != "succeeded":
        raise RuntimeError(f"inference job {job['id']} {job['status']}: {job['error']}")
    return elapsed, int(accepted.json()["inference"]["id"]), dict(job["result"] or {})


def _upload(client: httpx.Client, name: str, images: ImageSet) -> int:
    buffer = io.BytesIO()
    np.savez(buffer, x=images.x, y=images.y)
    files = {"file": (f"{name}.npz", buffer.getvalue(), "application/octet-stream")}
    response = client.post("/datasets", files=files, data={"name": name})
    response.raise_for_status()
    return int(response.json()["id"])


@dataclass
class _Timed:
    """Wall and CPU seconds (this process, all threads) of each run of one variant."""

    wall_s: list[float]
    cpu_s: list[float]

    @contextmanager
    def run(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall_s.append(time.perf_counter() - wall)
        self.cpu_s.append(time.process_time() - cpu)


def _seconds(timed: dict[str, _Timed]) -> dict[str, dict[str, list[float]]]:
    return {k: {"wall": [round(v, 2) for v in t.wall_s], "cpu": [round(v, 2) for v in t.cpu_s]}
            for k, t in timed.items()}  # fmt: skip


def core_ratios(network: ChipNetwork, plain: torch.nn.Module, g_us: np.ndarray, g_t0_us: np.ndarray,
                inputs: Inputs, rounds: int) -> dict[str, Any]:  # fmt: skip
    """Rounds of plain torch, chip (ideal periphery) and chip with ANALOG_IO, interleaved.

    The other lanes of this process are idle meanwhile, so its CPU time is the inference's:
    less disturbed than wall time by the other jobs on a shared machine."""
    norm = Normalisation.of_architecture(network.arch)
    timed = {key: _Timed([], []) for key in ("torch", "chip", "analog_io")}
    accuracy: dict[str, float] = {}
    assert inputs.y is not None
    warm = Inputs(inputs.x[:500], inputs.layout, inputs.y[:500])
    forward(plain, warm, norm)
    network.infer(warm, g_us, InferenceSettings(periphery=ANALOG_IO), g_t0_us)
    for _ in range(rounds):
        with timed["torch"].run():
            logits = forward(plain, inputs, norm)
        accuracy["torch"] = 100.0 * float((logits.argmax(1) == inputs.y).mean())
        for key, io_settings in (("chip", AnalogIO()), ("analog_io", ANALOG_IO)):
            with timed[key].run():
                [outcome] = network.infer(inputs, g_us, InferenceSettings(periphery=io_settings), g_t0_us)
            accuracy[key] = outcome.scores(inputs.y).accuracy_pct
    torch_t = timed["torch"]
    result: dict[str, Any] = {}
    for key, name in (("chip", "ratio_10k_vs_torch"), ("analog_io", "ratio_10k_analog_io_vs_torch")):
        t = timed[key]
        result[name] = round(min(t.wall_s) / min(torch_t.wall_s), 3)
        result[f"{name}_cpu"] = round(min(t.cpu_s) / min(torch_t.cpu_s), 3)
        result[f"{name}_median_of_rounds"] = round(statistics.median(
            a / b for a, b in zip(t.wall_s, torch_t.wall_s, strict=True)), 3)  # fmt: skip
    result["seconds_10k"] = _seconds(timed)
    result["accuracy_10k_pct"] = accuracy
    return result


@dataclass
class Service:
    """The live service with the ResNet-32 programmed and read back once."""

    client: httpx.Client
    worker: Worker
    worker_engine: Engine
    experiment_id: int
    readout_id: int
    setup_s: float


def _submit_resnet32(client: httpx.Client, resource: str, geometry: Geometry, workdir: Path) -> int:
    """Station, network and an experiment of one readback (25 s) without evaluation."""
    client.post("/stations", json={
        "name": "bench", "resource": resource, "chip_serial": "SIM-0001", "clock_kind": "virtual",
        "geometry": {"tiles": geometry.tiles, "rows": geometry.rows, "cols": geometry.cols},
    }).raise_for_status()  # fmt: skip
    checkpoint = {"file": ("resnet32.pt", (workdir / "resnet32.pt").read_bytes(), "application/octet-stream")}
    network_id = client.post("/networks", files=checkpoint).raise_for_status().json()["id"]
    return int(client.post("/experiments", json={
        "network_id": network_id, "station": "bench", "schedule": {"offsets_s": [25.0]},
        "evaluation": {"enabled": False},
    }).raise_for_status().json()["experiment"]["id"])  # fmt: skip


@contextmanager
def service(workdir: Path, poll_s: float) -> Iterator[Service]:
    url = f"sqlite:///{workdir / 'hwctl.sqlite'}"
    upgrade(make_engine(url))
    settings = Settings(_env_file=None, database_url=url, sse_poll_s=0.005)
    chip = start_embedded_chip(SimChipOptions(virtual=True))
    worker_engine = make_engine(url)
    worker = Worker(worker_engine, "bench", WorkerOptions(poll_s=poll_s))
    try:
        with BackgroundServer(create_app(settings)) as server, httpx.Client(
            base_url=server.url, timeout=600
        ) as client:
            experiment_id = _submit_resnet32(client, chip.resource, chip.options.geometry, workdir)
            worker.start()
            start = time.perf_counter()
            while not (readouts := client.get(f"/experiments/{experiment_id}").json()["readouts"]):
                if worker.error is not None:
                    raise worker.error
                time.sleep(0.2)
            setup_s = time.perf_counter() - start
            yield Service(client, worker, worker_engine, experiment_id, readouts[0]["id"], setup_s)
    finally:
        worker.stop()
        worker_engine.dispose()
        chip.stop()


def queue_overhead(live: Service, network: ChipNetwork, readout_g_us: np.ndarray, test: ImageSet,
                   runs: int) -> dict[str, Any]:  # fmt: skip
    one = ImageSet(test.x[:1], test.y[:1])
    spec = {"dataset_id": _upload(live.client, "one image", one), "at": live.readout_id}
    first_ms = 1e3 * _submit_and_wait(live.client, live.experiment_id, spec)[0]
    end_to_end_ms = [1e3 * _submit_and_wait(live.client, live.experiment_id, spec)[0] for _ in range(runs)]
    in_process_ms = []
    for _ in range(runs):
        start = time.perf_counter()
        network.infer(Inputs.from_image_set(one), readout_g_us, InferenceSettings(), readout_g_us)
        in_process_ms.append(1e3 * (time.perf_counter() - start))
    e2e, alone = statistics.median(end_to_end_ms), statistics.median(in_process_ms)
    return {"queue_overhead_ms_p50": round(e2e - alone, 1), "queue_end_to_end_ms_p50": round(e2e, 1),
            "queue_in_process_ms_p50": round(alone, 1), "queue_first_job_ms": round(first_ms, 1)}  # fmt: skip


def jobs_through_api(live: Service, test: ImageSet) -> dict[str, Any]:
    seconds, inference_id, _ = _submit_and_wait(
        live.client, live.experiment_id, {"dataset_id": CIFAR10_BUILTIN, "at": live.readout_id}
    )
    summary = live.client.get(f"/inferences/{inference_id}").json()["summary"]
    thousand = {"dataset_id": _upload(live.client, "thousand", ImageSet(test.x[:1000], test.y[:1000])),
                "at": "now"}  # fmt: skip
    runs, cpu_s = [], []
    for _ in range(3):
        cpu = time.process_time()
        runs.append(_submit_and_wait(live.client, live.experiment_id, thousand))
        cpu_s.append(time.process_time() - cpu)
    now_s = [seconds for seconds, _, _ in runs]
    return {
        "job_10k_end_to_end_s": round(seconds, 2),
        "job_10k_accuracy_pct": summary["results"][0]["accuracy_pct"],
        "now_read_infer_1000_s": round(statistics.median(now_s), 2),
        "now_read_infer_1000_runs_s": [round(s, 2) for s in now_s],
        "now_read_infer_1000_cpu_s": [round(s, 2) for s in cpu_s],  # the whole service: API, worker, chip
        "now_job_phases_s": [{k: v for k, v in result.items() if k.endswith("_s")} for _, _, result in runs],
    }  # fmt: skip


def export_vs_native(workdir: Path, checkpoint: Checkpoint, device_map: DeviceMap, g_us: np.ndarray,
                     inputs: Inputs, rounds: int) -> dict[str, Any]:  # fmt: skip
    """The `.pt2` of `hwctl export` run from the readout against the native model, interleaved."""
    archive = workdir / "resnet32.pt2"
    if hwctl_cli(["export", "resnet32", "--checkpoint", str(workdir / "resnet32.pt"), "--out", str(archive)]):
        raise RuntimeError("hwctl export failed")
    networks = {"native": ChipNetwork(checkpoint, device_map),
                "export": ChipNetwork(load_checkpoint(archive, "resnet32"), device_map)}  # fmt: skip
    assert inputs.y is not None
    timed = {key: _Timed([], []) for key in networks}
    accuracy: dict[str, float] = {}
    for network in networks.values():
        network.infer(Inputs(inputs.x[:500], inputs.layout, inputs.y[:500]), g_us, InferenceSettings())
    for _ in range(rounds):
        for key, network in networks.items():
            with timed[key].run():
                [outcome] = network.infer(inputs, g_us, InferenceSettings())
            accuracy[key] = outcome.scores(inputs.y).accuracy_pct
    export, native = timed["export"], timed["native"]
    return {
        "export_vs_native_accuracy_diff_pt": round(abs(accuracy["export"] - accuracy["native"]), 4),
        "export_vs_native_time_ratio": round(min(export.wall_s) / min(native.wall_s), 3),
        "export_vs_native_time_ratio_cpu": round(min(export.cpu_s) / min(native.cpu_s), 3),
        "export_vs_native_time_ratio_median_of_rounds": round(statistics.median(
            a / b for a, b in zip(export.wall_s, native.wall_s, strict=True)), 3),
        "export_vs_native_accuracy_pct": accuracy,
        "export_vs_native_seconds_10k": _seconds(timed),
    }


def run(rounds: int, queue_runs: int, poll_s: float, parts: set[str]) -> dict[str, Any]:
    torch.set_num_threads(os.cpu_count() or 1)
    path = shared_dir() / RESNET32
    if not path.exists():
        raise SystemExit(f"{path} not found: set HWCTL_SHARED_DIR")
    workdir = Path(tempfile.mkdtemp(prefix="hwctl-bench-infer-"))
    checkpoint = load_checkpoint(path, "resnet32")
    save_checkpoint(workdir / "resnet32.pt", "resnet32", checkpoint.build(), {"source": RESNET32})
    test = load_cifar10("test")
    with service(workdir, poll_s) as live:
        with live.worker_engine.connect() as conn:
            readout = store_readouts.load_readout(conn, live.readout_id)
            device_map = store_readouts.load_run_device_map(conn, readout.run_id)
        network = ChipNetwork(checkpoint, device_map)
        result: dict[str, Any] = {"n_devices": device_map.n_devices, "worker_poll_s": poll_s,
                                  "program_and_first_readout_s": round(live.setup_s, 2)}  # fmt: skip
        if "core" in parts:
            result |= core_ratios(network, checkpoint.build(), readout.g_us, readout.g_us,
                                  Inputs.from_image_set(test), rounds)  # fmt: skip
        if "queue" in parts:
            result |= queue_overhead(live, network, readout.g_us, test, queue_runs)
            # The same with the worker looking at the queue every 50 ms: what is polling, what is not.
            live.worker.options = replace(live.worker.options, poll_s=FAST_POLL_S)
            fast = queue_overhead(live, network, readout.g_us, test, queue_runs)
            result["queue_overhead_ms_p50_poll_50ms"] = fast["queue_overhead_ms_p50"]
            live.worker.options = replace(live.worker.options, poll_s=poll_s)
        if "api" in parts:
            result |= jobs_through_api(live, test)
        if "export" in parts:
            result |= export_vs_native(workdir, checkpoint, device_map, readout.g_us,
                                       Inputs.from_image_set(test), rounds)  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved 10k rounds (default %(default)s)")
    parser.add_argument("--queue-runs", type=int, default=15, help="1-image jobs timed (default %(default)s)")
    parser.add_argument("--poll-s", type=float, default=WorkerOptions().poll_s,
                        help="the worker's poll interval (default: its own, %(default)s s)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated, of: " + ", ".join(PARTS) + " (default: all)")
    parser.add_argument("--merge", action="store_true", help="keep the other parts' keys of --json")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        parser.error(f"--parts: unknown {sorted(parts - set(PARTS))}")
    machine = machine_info(torch=torch.__version__, torch_threads=torch.get_num_threads())
    result = {"benchmark": "inference", "machine": machine,
              **run(args.rounds, args.queue_runs, args.poll_s, parts)}  # fmt: skip
    measured = {part: machine for part in sorted(parts)}
    if args.merge and args.json is not None and args.json.exists():
        earlier = json.loads(args.json.read_text())
        measured = {**earlier.get("parts_measured", {p: earlier.get("machine") for p in PARTS}), **measured}
        result = {**earlier, **result}
    emit({**result, "parts_measured": measured}, args.json)


if __name__ == "__main__":
    main()
