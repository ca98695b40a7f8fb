"""`hwctl report EXPERIMENT_ID`: write an experiment's report directory and print a summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from hwctl.commands.errors import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="plots, tables and accuracy forecast of an experiment")
    p.add_argument("experiment_id", type=int, metavar="EXPERIMENT_ID")
    p.add_argument("--out", type=Path, help="report directory (default: ./report-experiment-ID)")
    p.add_argument("--database-url", help="SQLAlchemy URL (default: HWCTL_DATABASE_URL or the settings)")
    p.add_argument(
        "--no-forecast",
        action="store_true",
        help="skip the 1 week/1 month/1 year forecast (it evaluates the network 9 times)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the forecast's read-noise draws")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hwctl.report import analyze_experiment, summary_lines, write_report
    from hwctl.settings import get_settings
    from hwctl.store.engine import make_engine
    from hwctl.store.errors import StoreError
    from hwctl.store.migrate import ensure_migrated

    engine = make_engine(args.database_url or get_settings().database_url)
    out = args.out or Path(f"report-experiment-{args.experiment_id}")
    try:
        ensure_migrated(engine)
        analysis = analyze_experiment(
            engine, args.experiment_id, forecast=not args.no_forecast, seed=args.seed
        )
        index = write_report(analysis, out)
    except StoreError as exc:
        raise CLIError(str(exc)) from None
    finally:
        engine.dispose()
    print(index)
    print("\n".join(summary_lines(analysis)))
    return 0
