"""`hwctl db upgrade|current|check`: migrate the database and tell whether it is ready."""

from __future__ import annotations

import argparse

from hwctl.commands.errors import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("db", help="migrate the database or check that it is migrated")
    p.add_argument("action", choices=("upgrade", "current", "check"), help="check exits 2 if not at head")
    p.add_argument("--url", help="database URL (default: HWCTL_DATABASE_URL, else the embedded SQLite file)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hwctl.settings import Settings
    from hwctl.store.engine import describe, make_engine
    from hwctl.store.errors import StoreError
    from hwctl.store.migrate import current_revision, ensure_migrated, head_revision, upgrade

    settings = Settings()
    url = args.url or settings.database_url
    try:
        engine = make_engine(url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    except StoreError as exc:
        raise CLIError(str(exc)) from None
    try:
        if args.action == "upgrade":
            upgrade(engine)
            print(f"{describe(engine)}: at revision {current_revision(engine)} (head)")
        elif args.action == "current":
            print(f"{describe(engine)}: revision {current_revision(engine)}, head {head_revision()}")
        else:
            ensure_migrated(engine)
            print(f"{describe(engine)}: migrated (revision {head_revision()})")
    except StoreError as exc:
        raise CLIError(str(exc)) from None
    finally:
        engine.dispose()
    return 0
