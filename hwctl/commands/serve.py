"""`hwctl serve`: the REST API under uvicorn, by default with a simulated station beside it.

Embedded mode (the default) makes one process a complete lab: a station named `sim`
whose resource is an embedded simulated chip (`sim://`) and its station worker thread,
so experiments submitted to the API run without any hardware. Its clock is virtual by
default: the worker jumps it to each due readback, so a 24 h schedule runs in minutes and
no readback is missed while programming takes wall seconds (an accelerated 3600× clock
turns 2 s of programming into 2 h of board time, past the early readbacks). The chip is
non-volatile by default: its devices and board time are kept in a state file next to
the SQLite database (`--chip-state FILE` chooses another, `--no-chip-state` makes it
blank at every start), so a restarted `hwctl serve` finds the campaign's chip as it
left it. `--no-embedded` serves the API only; workers then run as `hwctl worker`
processes.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, make_url, select, update

from hwctl.commands.arguments import positive_number, tcp_port
from hwctl.commands.errors import CLIError
from hwctl.embedded_chip import SimChipOptions, with_state
from hwctl.settings import Settings, get_settings
from hwctl.store import records
from hwctl.store.engine import make_engine
from hwctl.store.errors import StoreError
from hwctl.store.schema import stations

DEFAULT_RATE = 3600.0  # board seconds per wall second with --clock accelerated
EMBEDDED_SERIAL = "SIM-0001"  # what drivers.sim.board.SimBoard reports by default


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the REST API (and, by default, a simulated station)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=tcp_port, default=8000, help="TCP port")
    parser.add_argument(
        "--embedded",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run a simulated chip and its station worker in this process",
    )
    parser.add_argument("--station", default="sim", help="name of the embedded station (default: sim)")
    parser.add_argument(
        "--clock",
        choices=("virtual", "accelerated"),
        default="virtual",
        help="embedded chip's clock: virtual (default; the worker jumps it to each due "
        "readback) or accelerated (runs --rate times real time)",
    )
    parser.add_argument(
        "--rate",
        type=positive_number,
        default=DEFAULT_RATE,
        help="board seconds per wall second with --clock accelerated (default: %(default)g)",
    )
    parser.add_argument(
        "--chip-state",
        type=Path,
        metavar="FILE",
        help="file keeping the embedded chip's devices and board time across restarts "
        "(default: STATION.chip-state next to the SQLite database, else under var/)",
    )
    parser.add_argument(
        "--no-chip-state",
        action="store_true",
        help="a volatile embedded chip: every device blank and its clock at 0 at each start",
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log every request (uvicorn access log)",
    )
    parser.set_defaults(func=run)


def embedded_resource(clock: str = "virtual", rate: float = DEFAULT_RATE, state: Path | None = None) -> str:
    """The embedded chip's `sim://` resource for a clock choice (and its state file)."""
    if clock == "virtual":
        resource = "sim://?clock=virtual"
    elif rate <= 0:
        raise CLIError(f"--rate must be positive, got {rate:g}")
    else:
        resource = f"sim://?clock=accelerated&rate={rate:g}"
    return resource if state is None else with_state(resource, state.resolve())


def default_chip_state(database_url: str, station: str) -> Path:
    """Where the embedded chip keeps its state: beside a SQLite database file (what is
    backed up together stays together), else under `var/` in the working directory."""
    url = make_url(database_url)
    on_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    folder = Path(str(url.database)).parent if on_file else Path("var")
    return folder / f"{station}.chip-state"


def ensure_embedded_station(engine: Engine, name: str, resource: str | None = None) -> None:
    """Register the embedded simulated station; an existing `sim://` row of that name takes
    the requested clock, a row naming real hardware is kept as it is."""
    resource = resource or embedded_resource()
    options = SimChipOptions.parse(resource)
    clock_kind = "virtual" if options.virtual else "accelerated"
    with engine.begin() as conn:
        existing = conn.execute(
            select(stations.c.id, stations.c.resource).where(stations.c.name == name)
        ).first()
        if existing is None:
            records.add_station(
                conn,
                name,
                resource=resource,
                chip_serial=EMBEDDED_SERIAL,
                geometry=options.geometry,
                amplitude_limit_ua=500.0,
                clock_kind=clock_kind,
            )
        elif existing.resource.startswith("sim://") and existing.resource != resource:
            values = {"resource": resource, "clock_kind": clock_kind}
            conn.execute(update(stations).where(stations.c.id == existing.id).values(**values))


def serve(
    settings: Settings,
    host: str,
    port: int,
    embedded_station: str | None,
    access_log: bool = True,
    embedded_resource: str | None = None,
) -> None:
    """Serve until interrupted; the embedded worker leaves its chip safe on the way out."""
    import uvicorn

    from api.app import create_app  # the web stack loads only for this command
    from hwctl.worker import Worker

    try:
        app = create_app(settings)
    except StoreError as exc:
        raise CLIError(str(exc)) from None
    worker = None
    if embedded_station is not None:
        worker_engine = make_engine(
            settings.database_url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms
        )
        ensure_embedded_station(worker_engine, embedded_station, embedded_resource)
        worker = Worker(worker_engine, embedded_station)
        worker.start()
    # The boot heap (torch, the app's models and routes: ~300k objects) lives as long as the
    # process; frozen, the cyclic GC stops rescanning it, a pass that stalled every request ~200 ms.
    gc.collect()
    gc.freeze()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log)
    finally:
        if worker is not None:
            worker.stop()
            worker.engine.dispose()


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    state = None
    if args.embedded and not args.no_chip_state:
        state = args.chip_state or default_chip_state(settings.database_url, args.station)
        state.parent.mkdir(parents=True, exist_ok=True)
    resource = embedded_resource(args.clock, args.rate, state)
    station = args.station if args.embedded else None
    serve(settings, args.host, args.port, station, args.access_log, resource)
    return 0
