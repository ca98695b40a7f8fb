"""`hwctl demo` end to end: real uvicorn, a fresh SQLite file, a simulated chip over TCP, a worker thread.

The demo trains the digits network, uploads it, registers the station and submits the
experiment through the REST API, follows it to the end and prints accuracy vs time;
here with 4 readbacks between 25 s and 24 h instead of 20.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from hwctl.cli import main
from hwctl.schedule import log_spaced_offsets_s
from hwctl.store.schema import evaluations, readouts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
POINTS = 4
METHODS = ("none", "GDC", "AdaBS")
CHANCE_PCT = 10.0  # ten digit classes


def accuracy_table(stdout: str) -> list[list[str]]:
    """The rows of the printed accuracy table, split into cells."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("scheduled"))
    header = re.split(r"\s{2,}", lines[start].strip())
    assert header == ["scheduled", "read at", *(f"{m} (%)" for m in METHODS)]
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_demo_programs_reads_back_over_24h_and_reports_every_method_at_every_readout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["demo", "--workdir", str(tmp_path), "--points", str(POINTS), "--no-forecast"])
    out = capsys.readouterr().out
    assert code == 0, out

    rows = accuracy_table(out)
    assert len(rows) == POINTS, rows
    for row in rows:
        assert len(row) == 2 + len(METHODS), row  # no readout missed, no method missing
        assert all(0.0 <= float(cell) <= 100.0 for cell in row[2:]), row
    assert rows[-1][0] == "1 d"
    assert min(float(cell) for cell in rows[0][2:]) > 5 * CHANCE_PCT, rows[0]  # at t0, before drift

    assert re.search(r"outliers: stuck \d+, dead \d+", out), out  # the report's drift summary
    report = re.search(r"report: (\S+index\.html)", out)
    assert report is not None, out
    report_dir = Path(report.group(1)).parent
    for name in ("index.html", "report.md", "report.json", "accuracy.png", "drift.svg"):
        assert (report_dir / name).stat().st_size > 0, name
    assert "dashboard: http" not in out  # the API has stopped: no dead link
    assert "--keep-serving" in out
    assert re.search(r"demo finished in [\d.]+ s", out)

    engine = create_engine(f"sqlite:///{tmp_path / 'hwctl-demo.sqlite'}")
    with engine.connect() as conn:  # what the worker stored, not only what was printed
        offsets = conn.execute(select(readouts.c.offset_s).order_by(readouts.c.offset_s)).scalars().all()
        n_evaluations = conn.execute(select(func.count()).select_from(evaluations)).scalar()
    engine.dispose()
    assert offsets == log_spaced_offsets_s(25.0, 86_400.0, POINTS)
    assert n_evaluations == POINTS * len(METHODS)


def test_demo_on_a_busy_port_says_so_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["demo", "--workdir", str(tmp_path), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"port {port} is in use" in err
    assert "Traceback" not in err
