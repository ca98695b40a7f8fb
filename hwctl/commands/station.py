"""`hwctl station add|list`: register the stations (one chip each) that workers own.

`add --probe` asks the board itself for its serial, geometry and amplitude limit, so an
operator types only the resource string; it talks to the chip, so run it before the
station's worker starts (the worker is the board's only owner afterwards).
"""

from __future__ import annotations

import argparse
import re

from hwctl.commands.errors import CLIError

CLOCK_KINDS = ("real", "accelerated", "virtual")
LIST_HEADER = ("name", "resource", "chip", "tiles x rows x cols", "limit", "clock")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("station", help="register or list stations (one chip each)")
    actions = p.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="register a station")
    add.add_argument("name")
    add.add_argument("--resource", required=True,
                     help="TCPIP::host::port::SOCKET, ASRL/dev/ttyUSB0::INSTR, socket://host:port or sim://…")
    add.add_argument("--probe", action="store_true",
                     help="read serial, geometry and amplitude limit from the board (not for sim://)")
    add.add_argument("--serial", help="chip serial (required without --probe)")
    add.add_argument("--geometry", help="TILES,ROWS,COLS (required without --probe)")
    add.add_argument("--limit-ua", type=float, default=500.0, help="session pulse amplitude limit, µA")
    add.add_argument("--clock", choices=CLOCK_KINDS,
                     help="the station clock's kind (the board protocol cannot report it, so --probe "
                          "does not read it; default: a sim:// resource's own clock, else real)")
    add.add_argument("--if-missing", action="store_true", help="do nothing if the name is taken")
    actions.add_parser("list", help="list registered stations")
    for sub in (add, actions.choices["list"]):
        sub.add_argument("--url", help="database URL (default: HWCTL_DATABASE_URL, else the embedded SQLite)")
    p.set_defaults(func=run)


def _describe_chip(args: argparse.Namespace) -> tuple[str, tuple[int, int, int], float]:
    """Serial, geometry and limit: from the board with --probe, else from the flags."""
    if args.probe:
        return _probe(args.resource, args.limit_ua)
    if not args.serial or not args.geometry:
        raise CLIError("give --serial and --geometry TILES,ROWS,COLS, or --probe to ask the board")
    try:
        tiles, rows, cols = (int(x) for x in args.geometry.split(","))
    except ValueError:
        raise CLIError(f"--geometry must be TILES,ROWS,COLS, got {args.geometry!r}") from None
    return args.serial, (tiles, rows, cols), args.limit_ua


def _check(name: str, geometry: tuple[int, int, int], limit_ua: float) -> None:
    """What the API's POST /stations refuses, refused here too: a station stored outside
    those bounds fails every listing of stations (its record no longer validates)."""
    from hwctl.experiment_spec import MAX_AMPLITUDE_UA, STATION_GEOMETRY_BOUNDS, STATION_NAME_PATTERN

    if not re.fullmatch(STATION_NAME_PATTERN, name):
        raise CLIError(
            f"station name {name!r}: letters, digits, '_', '.', '-', at most 64, a letter or digit first"
        )
    for (axis, (least, most)), value in zip(STATION_GEOMETRY_BOUNDS.items(), geometry, strict=True):
        if not least <= value <= most:
            raise CLIError(f"--geometry: {axis} must be in [{least}, {most}], got {value}")
    if not 0 < limit_ua <= MAX_AMPLITUDE_UA:  # NaN fails this too
        raise CLIError(f"--limit-ua must be in (0, {MAX_AMPLITUDE_UA:g}] uA, got {limit_ua}")


def _probe(resource: str, limit_ua: float) -> tuple[str, tuple[int, int, int], float]:
    """Serial, geometry and limit as the board at `resource` reports them."""
    from drivers.chip import ChipDriver
    from drivers.errors import DriverError, LinkError
    from drivers.transports.factory import open_transport

    if resource.startswith("sim://"):
        raise CLIError(
            "--probe needs a running board, and a sim:// station's chip is simulated inside its "
            "worker: give --serial and --geometry, or serve one with `hwctl sim-chip` and register "
            "socket://HOST:PORT"
        )
    try:
        with ChipDriver(open_transport(resource)) as chip:
            g = chip.geometry()
            limit_ua = min(limit_ua, chip.max_amplitude_ua())
            return chip.identify().serial, (g.tiles, g.rows, g.cols), limit_ua
    except LinkError as exc:
        raise CLIError(f"cannot reach the board at {resource}: {_without(resource, exc)}") from None
    except DriverError as exc:
        raise CLIError(f"the board at {resource} failed the probe: {_without(resource, exc)}") from None


def _default_clock(resource: str) -> str:
    """A sim:// resource names its clock; any other board keeps wall time."""
    if not resource.startswith("sim://"):
        return "real"
    from hwctl.embedded_chip import SimChipOptions
    from hwctl.station import StationError

    try:
        return "virtual" if SimChipOptions.parse(resource).virtual else "accelerated"
    except StationError as exc:
        raise CLIError(str(exc)) from None


def _without(resource: str, exc: Exception) -> str:
    """The error's message without the resource the sentence already names."""
    return str(exc).removeprefix(f"{resource}: ")


def run(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from drivers.base import Geometry
    from hwctl.settings import Settings
    from hwctl.store.engine import make_engine
    from hwctl.store.errors import StoreError
    from hwctl.store.migrate import ensure_migrated
    from hwctl.store.records import add_station
    from hwctl.store.schema import stations

    settings = Settings()
    url = args.url or settings.database_url
    engine = make_engine(url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    try:
        ensure_migrated(engine)
        with engine.begin() as conn:
            if args.action == "list":
                print("\t".join(LIST_HEADER))
                for row in conn.execute(select(stations).order_by(stations.c.name)):
                    print(f"{row.name}\t{row.resource}\t{row.chip_serial}\t"
                          f"{row.tiles}x{row.rows}x{row.cols}\t{row.amplitude_limit_ua} uA\t{row.clock_kind}")
                return 0
            taken = conn.execute(select(stations.c.id).where(stations.c.name == args.name)).first()
            if taken is not None:
                if args.if_missing:
                    print(f"station {args.name!r} already registered")
                    return 0
                raise CLIError(f"a station named {args.name!r} already exists")
            serial, (tiles, rows, cols), limit_ua = _describe_chip(args)
            _check(args.name, (tiles, rows, cols), limit_ua)
            add_station(conn, args.name, resource=args.resource, chip_serial=serial,
                        geometry=Geometry(tiles, rows, cols), amplitude_limit_ua=limit_ua,
                        clock_kind=args.clock or _default_clock(args.resource))  # fmt: skip
            print(f"station {args.name!r} registered: {args.resource}, chip {serial}, "
                  f"{tiles}x{rows}x{cols}, limit {limit_ua} uA")
    except StoreError as exc:
        raise CLIError(str(exc)) from exc
    finally:
        engine.dispose()
    return 0
