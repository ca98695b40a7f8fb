"""Argument types more than one command shares (argparse `type=`: a bad value is a usage
error, one line and exit 2, never a traceback from deep inside)."""

from __future__ import annotations

import argparse


def tcp_port(text: str) -> int:
    """0–65535: bind() raises OverflowError (a traceback) for any other number, and uvicorn
    logs a resolver error for a negative one."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not an integer") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0-65535")
    return port
