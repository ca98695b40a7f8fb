"""`hwctl sim-chip` as a user runs it: a process that listens, serves, and stops on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from drivers.chip import ChipDriver
from drivers.transports.factory import open_transport
from hwctl.cli import main


def test_sim_chip_prints_its_address_serves_and_stops_cleanly_on_ctrl_c() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "hwctl.cli", "sim-chip", "--port", "0", "--geometry", "1,8,8", "--seed", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("hwctl sim-chip listening on TCPIP::127.0.0.1::")
        resource = line.rsplit(" ", 1)[1]
        assert process.stdout.readline().strip() == "watchdog: safe state after 60 s without host traffic"
        with ChipDriver(open_transport(resource, timeout_s=5.0)) as chip:
            assert chip.geometry().n_devices == 64
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "stopped" in stderr and "Traceback" not in stderr


def test_bad_geometry_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["sim-chip", "--geometry", "2,x"])
    assert exited.value.code == 2 and "T,R,C" in capsys.readouterr().err


def test_help_shows_every_default_as_it_is_typed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["sim-chip", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for default in ("(default 5025)", "(default 16,512,256)", "(default virtual)", "(default 60)"):
        assert default in shown
    assert "Geometry(" not in shown


@pytest.mark.parametrize(
    ("argv", "refusal"),
    [
        (["--port", "-1"], "--port"),
        (["--port", "99999"], "--port"),
        (["--clock", "accelerated", "--rate", "nan"], "rate"),
        (["--clock", "accelerated", "--rate", "inf"], "rate"),
    ],
)
def test_a_bad_port_or_rate_is_one_line_and_a_nonzero_exit(
    capsys: pytest.CaptureFixture[str], argv: list[str], refusal: str
) -> None:
    """--port -1 was an OverflowError traceback from bind(); --rate nan served a board
    whose clock read NaN."""
    assert_refused(capsys, ["sim-chip", *argv], refusal)


@pytest.mark.parametrize(
    "argv",
    [["serve", "--rate", "nan"], ["demo", "--rate", "inf"], ["demo", "--epochs", "nan"],
     ["demo", "--last-s", "nan"], ["worker", "--station", "s", "--poll-s", "nan"],
     ["sim-chip", "--watchdog-s", "nan"]],
)  # fmt: skip
def test_a_nan_or_infinite_rate_or_period_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """`serve --clock accelerated --rate nan` served on with its station worker dead of a
    traceback; `worker --poll-s nan` and `sim-chip --watchdog-s nan` ran with NaN periods."""
    assert_refused(capsys, argv, argv[-2])


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_the_other_servers_refuse_a_bad_port_the_same_way(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """`hwctl serve --port -5` logged uvicorn's resolver error over six lines and exited 3."""
    assert_refused(capsys, [command, "--port", "-5"], "--port")


def assert_refused(capsys: pytest.CaptureFixture[str], argv: list[str], refusal: str) -> None:
    try:
        code = main(argv)
    except SystemExit as stopped:  # a usage error
        code = int(str(stopped.code))
    assert code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert refusal in error.strip().splitlines()[-1]
