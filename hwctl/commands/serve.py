"""`hwctl serve`: the REST API under uvicorn, by default with a simulated station beside it.

Embedded mode (the default) makes one process a complete lab: a station named `sim`
whose resource is an embedded simulated chip (`sim://`, accelerated clock) and its
station worker thread, so experiments submitted to the API run without any hardware.
`--no-embedded` serves the API only; workers then run as `hwctl worker` processes.
"""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import Engine, select

from hwctl.cli import CLIError
from hwctl.settings import Settings, get_settings
from hwctl.station import SimChipOptions
from hwctl.store import records
from hwctl.store.engine import make_engine
from hwctl.store.errors import NotMigratedError
from hwctl.store.schema import stations

EMBEDDED_RESOURCE = "sim://?clock=accelerated&rate=3600"
EMBEDDED_SERIAL = "SIM-0001"  # what drivers.sim.board.SimBoard reports by default


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the REST API (and, by default, a simulated station)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument("--embedded", action=argparse.BooleanOptionalAction, default=True,
                        help="also run a simulated chip and its station worker in this process")
    parser.add_argument("--station", default="sim", help="name of the embedded station (default: sim)")
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                        help="log every request (uvicorn access log)")
    parser.set_defaults(func=run)


def ensure_embedded_station(engine: Engine, name: str, resource: str = EMBEDDED_RESOURCE) -> None:
    """Register the embedded simulated station once; an existing row of that name is kept."""
    with engine.begin() as conn:
        if conn.execute(select(stations.c.id).where(stations.c.name == name)).first() is not None:
            return
        options = SimChipOptions.parse(resource)
        records.add_station(
            conn, name, resource=resource, chip_serial=EMBEDDED_SERIAL, geometry=options.geometry,
            amplitude_limit_ua=500.0, clock_kind="virtual" if options.virtual else "accelerated",
        )


def serve(
    settings: Settings, host: str, port: int, embedded_station: str | None, access_log: bool = True
) -> None:
    """Serve until interrupted; the embedded worker leaves its chip safe on the way out."""
    import uvicorn

    from api.app import create_app  # the web stack loads only for this command
    from hwctl.worker import Worker

    try:
        app = create_app(settings)
    except NotMigratedError as exc:
        raise CLIError(str(exc)) from None
    worker = None
    if embedded_station is not None:
        worker_engine = make_engine(
            settings.database_url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms
        )
        ensure_embedded_station(worker_engine, embedded_station)
        worker = Worker(worker_engine, embedded_station)
        worker.start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log)
    finally:
        if worker is not None:
            worker.stop()
            worker.engine.dispose()


def run(args: argparse.Namespace) -> int:
    serve(get_settings(), args.host, args.port, args.station if args.embedded else None, args.access_log)
    return 0
