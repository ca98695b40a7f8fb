"""`hwctl sim-chip`: serve a simulated PCM chip on TCP, speaking the board protocol.

Drivers, campaigns and the service then talk to it exactly as to a lab board, e.g.
`TCPIP::127.0.0.1::5025::SOCKET` via VISA or `socket://127.0.0.1:5025` via pyserial.
With `--state FILE` the chip is non-volatile: a restart (even after kill -9) continues
with the devices as they were and the board clock running on (`drivers.sim.state`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from drivers.base import Geometry
from drivers.pcm_model import PCMModel
from drivers.sim.board import DEFAULT_GEOMETRY, GEOMETRY_PRESETS, SimBoard
from drivers.sim.clock import AcceleratedClock, Clock, RealClock, VirtualClock
from drivers.sim.server import SimChipServer
from drivers.sim.state import StateFileError
from hwctl.commands.arguments import non_negative_number, positive_number, tcp_port
from hwctl.commands.errors import CLIError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("sim-chip", help="serve a simulated PCM chip over TCP (board protocol)")
    parser.add_argument("--port", type=tcp_port, default=5025,
                        help="TCP port, 0: any free port (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the device statistics")
    presets = ", ".join(f"{name} = {_geometry_text(g)}" for name, g in GEOMETRY_PRESETS.items())
    parser.add_argument("--geometry", type=_geometry, default=DEFAULT_GEOMETRY, metavar="T,R,C|PRESET",
                        help=f"tiles,rows,cols or a preset: {presets} "
                             f"(default {_geometry_text(DEFAULT_GEOMETRY)})")
    parser.add_argument("--state", type=Path, metavar="FILE",
                        help="keep devices and board time in FILE (created if missing): the chip survives "
                             "restarts and kill -9 like a non-volatile chip; without it a restart is blank "
                             "with its clock at 0")
    parser.add_argument("--clock", choices=("virtual", "real", "accelerated"), default="virtual",
                        help="board clock: advanced by SIM:TIME:ADV only, wall time, or wall time × rate "
                             "(default %(default)s)")
    parser.add_argument("--rate", type=positive_number, default=1.0,
                        help="speed-up of the accelerated clock (default %(default)g)")
    parser.add_argument("--model", help="fitted PCM model JSON (PCMModel.to_json)")
    parser.add_argument("--watchdog-s", type=non_negative_number, default=60.0, metavar="S",
                        help="safe state after this many seconds without host traffic, 0: off "
                             "(default %(default)g)")
    parser.set_defaults(func=run)


def _geometry(text: str) -> Geometry:
    if text in GEOMETRY_PRESETS:
        return GEOMETRY_PRESETS[text]
    try:
        tiles, rows, cols = (int(v) for v in text.split(","))
    except ValueError:
        names = ", ".join(GEOMETRY_PRESETS)
        message = f"geometry {text!r} is not T,R,C (three integers) or one of {names}"
        raise argparse.ArgumentTypeError(message) from None
    if min(tiles, rows, cols) <= 0:
        raise argparse.ArgumentTypeError(f"geometry {text!r} must be positive")
    return Geometry(tiles, rows, cols)


def _geometry_text(geometry: Geometry) -> str:
    return f"{geometry.tiles},{geometry.rows},{geometry.cols}"


def _clock(kind: str, rate: float) -> Clock:
    if kind == "accelerated":
        return AcceleratedClock(rate)
    if rate != 1.0:
        raise CLIError("--rate applies only to --clock accelerated")
    return RealClock() if kind == "real" else VirtualClock()


async def _serve(server: SimChipServer) -> None:
    try:
        await server.start()
    except OSError as exc:
        raise CLIError(f"cannot listen on {server.host}:{server.port}: {exc.strerror or exc}") from None
    print(f"hwctl sim-chip listening on {server.resource}", flush=True)
    if server.watchdog_s is None:
        print("watchdog off: the board stays as the host left it", flush=True)
    else:
        print(f"watchdog: safe state after {server.watchdog_s:g} s without host traffic", flush=True)
    print(_power_text(server.board), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _open_board(args: argparse.Namespace) -> SimBoard:
    model = PCMModel.from_json(args.model) if args.model else None
    clock = _clock(args.clock, args.rate)
    try:
        return SimBoard(args.geometry, model=model, clock=clock, seed=args.seed, state_path=args.state)
    except (StateFileError, OSError) as exc:
        raise CLIError(f"cannot use state file {args.state}: {exc}") from None


def _power_text(board: SimBoard) -> str:
    n = board.geometry().n_devices
    if board.state_path is None:
        return f"{n} devices, volatile: devices and clock are lost when this process ends"
    boots = board.array.store.boots
    status = f"continued (power-up {boots})" if boots else "new"
    return f"{n} devices, state {board.state_path}: {status}, board time {board.board_time_s():.3f} s"


def run(args: argparse.Namespace) -> int:
    board = _open_board(args)
    watchdog_s = args.watchdog_s if args.watchdog_s > 0 else None
    server = SimChipServer(board, host=args.host, port=args.port, watchdog_s=watchdog_s)
    signal.signal(signal.SIGTERM, _stop)
    # A server started in the background of a script inherits SIGINT ignored (the shell's rule
    # for asynchronous commands); `kill -INT` must still stop it cleanly, so take SIGINT back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        asyncio.run(_serve(server))
    except KeyboardInterrupt:
        print("hwctl sim-chip: stopped", file=sys.stderr)
    finally:
        board.close()
    return 0
