"""Argument types more than one command shares (argparse `type=`: a bad value is a usage
error, one line and exit 2, never a traceback from deep inside)."""

from __future__ import annotations

import argparse
import math


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


def positive_number(text: str) -> float:
    """A finite number > 0 (a rate, a period, a count of epochs): float() takes 'nan' and
    'inf', and NaN passes every `<= 0` check after it."""
    value = _number(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
    return value


def non_negative_number(text: str) -> float:
    """A finite number ≥ 0 (0 meaning off, where the option says so)."""
    value = _number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number ≥ 0")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
