"""hwctl: program networks onto PCM chips, read them back over time, measure accuracy.

One sub-command module per domain under `hwctl.commands`, each with a `register(subparsers)`.
Errors that a user can act on are raised as `CLIError` (`hwctl.commands.errors`, or a
`DriverError`) and printed as one message, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from drivers.errors import DriverError
from hwctl.commands.errors import CLIError

# Sub-command modules, in the order `hwctl --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "hwctl.commands.sim_chip",
    "hwctl.commands.db",
    "hwctl.commands.station",
    "hwctl.commands.serve",
    "hwctl.commands.train",
    "hwctl.commands.evaluate",
    "hwctl.commands.export",
    "hwctl.commands.worker",
    "hwctl.commands.report",
    "hwctl.commands.demo",
    "hwctl.commands.experiment",
    "hwctl.commands.infer",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hwctl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, DriverError, FileNotFoundError, ValueError) as exc:
        print(f"hwctl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hwctl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
