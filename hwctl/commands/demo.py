"""`hwctl demo`: the whole lab in one command, on a simulated chip, in a few minutes.

It starts the service on the embedded default (a fresh SQLite file under the work
directory, the REST API on a real uvicorn port, a station worker thread whose chip is
a simulated board served over TCP), trains the small digits
ResNet with weight-noise injection, then does what a user would do through the REST
API: upload the network, register the station, submit an experiment with a 24 h
log-spaced readback schedule and follow it. At the end it prints accuracy vs time per
drift compensation and the drift statistics, writes the report with its plots and
prints where to look. Nothing goes around the API except starting the service itself.

The chip's clock is virtual by default: the worker jumps it to each due readback, so
24 h of drift cost only the compute time and every readback happens on schedule.
`--rate X` runs it accelerated instead (X board seconds per wall second), as a lab
board would run in real time: then programming itself takes board time (devices drift
while the rest are programmed) and a readback the busy worker starts past its window
is missed, which the table shows.
"""

from __future__ import annotations

import argparse
import errno
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwctl.commands.arguments import positive_number, tcp_port
from hwctl.commands.errors import CLIError
from hwctl.commands.experiment import follow_experiment, result_lines
from hwctl.vocabulary import ExperimentStatus

if TYPE_CHECKING:
    from hwctl.worker import Worker

DEFAULT_WORKDIR = Path("var/demo")
DEMO_ARCH = "digits-resnet"
DEMO_SERIAL = "SIM-0001"  # what drivers.sim.board.SimBoard reports
WORKER_POLL_S = 0.05
FIRST_OFFSET_S = 25.0  # the paper's t0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="train, program, read back over 24 h (accelerated) and report, on a simulated chip"
    )
    parser.add_argument("--port", type=tcp_port, default=0, help="API port (default: any free port)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="database, checkpoint and report go here; the demo database is "
                             "recreated on every run (default: %(default)s)")
    parser.add_argument("--points", type=int, default=20, help="readbacks from 25 s to 24 h (default 20)")
    parser.add_argument("--last-s", type=positive_number, default=86_400.0,
                        help="last readback, seconds after programming (default: 24 h)")
    parser.add_argument("--rate", type=positive_number,
                        help="run the chip on an accelerated clock, X board seconds per wall second "
                             "(default: a virtual clock the worker jumps to each readback)")
    parser.add_argument("--epochs", type=positive_number, default=2.0,
                        help="training epochs (default %(default)g)")
    parser.add_argument("--seed", type=int, default=0, help="seed of training and of the chip")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for training and evaluation (default 1: the API, the worker "
                             "and the chip share the CPU)")
    parser.add_argument("--no-forecast", action="store_true", help="skip the report's accuracy forecast")
    parser.add_argument("--keep-serving", action="store_true",
                        help="keep the API and dashboard up after the demo until Ctrl-C")
    parser.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    if args.points < 2:
        raise CLIError(f"--points must be at least 2, got {args.points}")
    if (args.rate is not None and args.rate <= 0) or args.epochs <= 0 or args.threads < 1:
        raise CLIError("--rate, --epochs and --threads must be positive")
    if args.last_s <= FIRST_OFFSET_S:
        raise CLIError(f"--last-s must be after the first readback at {FIRST_OFFSET_S:g} s")
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be 0..65535, got {args.port}")


def _fresh_database(workdir: Path) -> str:
    """A new SQLite file: every demo run starts empty, so reruns are reproducible."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "hwctl-demo.sqlite"
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    return f"sqlite:///{path.resolve()}"


def _train_network(path: Path, epochs: float, seed: int) -> float:
    """Noise-aware training of the digits ResNet (pcm-model.md §7); returns its test accuracy, %."""
    import torch

    from hwctl.nn.data import load_dataset
    from hwctl.nn.models import build_model, save_checkpoint
    from hwctl.nn.training import TrainRecipe, train

    recipe = TrainRecipe(arch=DEMO_ARCH, data="digits", epochs=epochs, lr=0.1, batch_size=64,
                         seed=seed, augment=False)  # fmt: skip
    torch.manual_seed(seed)
    model = build_model(DEMO_ARCH)
    train_set, test_set = load_dataset("digits", "train"), load_dataset("digits", "test")
    meta = train(model, recipe, train_set, test_set, progress=False)
    save_checkpoint(path, DEMO_ARCH, model, meta)
    return float(meta["fp_test_accuracy"])


def _station_resource(args: argparse.Namespace) -> tuple[str, str, str]:
    """Station name, `sim://` resource (a simulated board behind a real TCP server) and clock kind."""
    if args.rate is None:
        return "demo-sim-virtual", f"sim://?clock=virtual&seed={args.seed}", "virtual"
    return (f"demo-sim-{args.rate:g}x", f"sim://?clock=accelerated&rate={args.rate:g}&seed={args.seed}",
            "accelerated")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    started_s = time.monotonic()
    import torch  # the torch and web stacks load only for this command

    from api.app import create_app
    from api.server import BackgroundServer
    from hwctl.client import ApiError, HwctlClient
    from hwctl.embedded_chip import SimChipOptions
    from hwctl.experiment_spec import EvaluationSpec, ExperimentSpec, ScheduleSpec
    from hwctl.report import analyze_experiment, summary_lines, write_report
    from hwctl.schedule import log_spaced_offsets_s
    from hwctl.settings import Settings
    from hwctl.store.engine import make_engine
    from hwctl.store.migrate import upgrade
    from hwctl.worker import Worker, WorkerOptions

    def step(message: str) -> None:
        print(f"[{time.monotonic() - started_s:6.1f} s] {message}", flush=True)

    workdir: Path = args.workdir
    url = _fresh_database(workdir)
    settings = Settings(_env_file=None, database_url=url, api_keys=[])
    engine = make_engine(url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    worker: Worker | None = None
    server: BackgroundServer | None = None
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        upgrade(engine)
        step(f"database {url} migrated")
        try:
            server = BackgroundServer(create_app(settings), port=args.port).start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CLIError(f"port {args.port} is in use; pass another --port, or --port 0") from None
            raise CLIError(f"cannot serve on port {args.port}: {exc}") from None
        step(f"API serving on {server.url} (docs: {server.url}/docs)")
        checkpoint = workdir / "digits-demo.pt"
        accuracy = _train_network(checkpoint, args.epochs, args.seed)
        step(f"trained {DEMO_ARCH} with weight-noise injection: {accuracy:.1f} % test accuracy in software")

        with HwctlClient(server.url) as client:
            network = client.upload_network_file(checkpoint, name="digits demo")
            step(f"uploaded network {network['id']} ({network['architecture']}) through POST /networks")
            name, resource, clock_kind = _station_resource(args)
            station = client.ensure_station(
                name, resource, DEMO_SERIAL, SimChipOptions.parse(resource).geometry, clock_kind
            )
            worker = Worker(make_engine(url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms),
                            station["name"], WorkerOptions(poll_s=WORKER_POLL_S))  # fmt: skip
            worker.start()
            step(f"station {station['name']}: simulated chip over TCP ({resource}), worker started")
            offsets_s = log_spaced_offsets_s(FIRST_OFFSET_S, args.last_s, args.points)
            spec = ExperimentSpec(
                network_id=network["id"], station=station["name"], name="digits demo",
                schedule=ScheduleSpec(offsets_s=offsets_s),
                evaluation=EvaluationSpec(dataset="digits"),
            )  # fmt: skip
            experiment_id = int(client.submit_experiment(spec)["experiment"]["id"])
            step(f"experiment {experiment_id} submitted: {args.points} readbacks from 25 s to "
                 f"{args.last_s / 3600:g} h after programming")  # fmt: skip
            detail = follow_experiment(client, experiment_id, check=_alive(worker))
            step("campaign finished")
            print("\n".join(result_lines(client, detail)), flush=True)
            if detail["status"] != ExperimentStatus.DONE:
                raise CLIError(f"experiment {experiment_id} stopped while {detail['status']}; no report")
            forecast = not args.no_forecast
            analysis = analyze_experiment(engine, experiment_id, forecast=forecast, seed=args.seed)
            index = write_report(analysis, workdir / f"report-experiment-{experiment_id}")
            print("\n".join(summary_lines(analysis)))
            step(f"report: {index.resolve()}")
        print(f"demo finished in {time.monotonic() - started_s:.1f} s", flush=True)
        if args.keep_serving:  # the dashboard URL is printed only while something serves it
            print(f"dashboard: {server.url}/dashboard/experiments/{experiment_id}", flush=True)
            print(f"serving {server.url} until Ctrl-C", flush=True)
            _wait_for_interrupt()
        else:
            print("the API has stopped; open the report above, or rerun with --keep-serving "
                  "to keep the API and dashboard up", flush=True)  # fmt: skip
    except ApiError as exc:
        raise CLIError(str(exc)) from None
    finally:
        if worker is not None:
            worker.stop()
            worker.engine.dispose()
        if server is not None:
            server.stop()
        engine.dispose()
        torch.set_num_threads(threads)
    return 0


def _alive(worker: Worker) -> Callable[[], None]:
    """A check that stops the wait when the embedded worker thread has died."""

    def check() -> None:
        if worker.error is not None:
            raise CLIError(f"the station worker stopped: {type(worker.error).__name__}: {worker.error}")

    return check


def _wait_for_interrupt() -> None:
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopping", flush=True)

