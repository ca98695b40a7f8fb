"""`hwctl report EXPERIMENT_ID`: write an experiment's report directory and print a summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from hwctl.commands.errors import CLIError

MAX_FORECAST_DRAWS = 16  # each draw evaluates the network once per horizon and method


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="plots, tables and accuracy forecast of an experiment")
    p.add_argument("experiment_id", type=int, metavar="EXPERIMENT_ID")
    p.add_argument("--out", type=Path, help="report directory (default: ./report-experiment-ID)")
    p.add_argument("--database-url", help="SQLAlchemy URL (default: HWCTL_DATABASE_URL or the settings)")
    p.add_argument(
        "--no-forecast",
        action="store_true",
        help="skip the 1 week/1 month/1 year forecast (it evaluates the network 9 times per draw)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the forecast's read-noise draws")
    p.add_argument(
        "--forecast-draws", type=_draws, metavar="N",
        help="synthetic reads per forecast horizon, their mean and spread reported (default: 3)",
    )  # fmt: skip
    p.set_defaults(func=run)


def _draws(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_FORECAST_DRAWS:
        raise argparse.ArgumentTypeError(f"forecast draws are 1 to {MAX_FORECAST_DRAWS}, not {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    from hwctl.analysis.forecast import FORECAST_DRAWS
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
            engine, args.experiment_id, forecast=not args.no_forecast, seed=args.seed,
            forecast_draws=args.forecast_draws or FORECAST_DRAWS,
        )  # fmt: skip
        index = write_report(analysis, out)
    except StoreError as exc:
        raise CLIError(str(exc)) from None
    finally:
        engine.dispose()
    print(index)
    print("\n".join(summary_lines(analysis)))
    return 0
