"""What every benchmark records: the machine it ran on, and its result as JSON."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine_info(**extra: Any) -> dict[str, Any]:
    """Platform, cores, Python and the load average now (other jobs often share this box,
    so every result says how busy it was); `extra` adds library versions and the like."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **extra,
    }


def write_json(result: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


def emit(result: dict[str, Any], path: Path | None) -> None:
    """Print the result and, if asked, write it to `path`."""
    print(json.dumps(result, indent=2))
    write_json(result, path)
