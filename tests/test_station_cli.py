"""`hwctl station add|list`: registering the chips that workers own."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwctl.cli import main

Output = pytest.CaptureFixture[str]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'hwctl.sqlite'}"
    assert main(["db", "upgrade", "--url", url]) == 0
    return url


def test_station_is_registered_from_flags_and_listed(database_url: str, capsys: Output) -> None:
    argv = ["station", "add", "bench-1", "--resource", "TCPIP::10.0.0.5::5025::SOCKET",
            "--serial", "PCM-042", "--geometry", "16,512,256", "--url", database_url]
    assert main(argv) == 0
    assert main(["station", "list", "--url", database_url]) == 0
    listing = capsys.readouterr().out
    assert "bench-1\tTCPIP::10.0.0.5::5025::SOCKET\tPCM-042\t16x512x256" in listing


def test_station_probe_reads_serial_and_geometry_from_the_board(database_url: str, capsys: Output) -> None:
    from drivers.base import Geometry
    from drivers.sim.board import SimBoard
    from drivers.sim.server import serve_in_thread

    server = serve_in_thread(SimBoard(Geometry(2, 64, 64), serial="SIM-PROBED"), port=0)
    try:
        argv = ["station", "add", "sim-1", "--resource", f"socket://127.0.0.1:{server.port}", "--probe",
                "--limit-ua", "200", "--url", database_url]
        assert main(argv) == 0
    finally:
        server.stop()
    assert "chip SIM-PROBED, 2x64x64, limit 200.0 uA" in capsys.readouterr().out


def test_duplicate_name_is_an_error_unless_if_missing(database_url: str, capsys: Output) -> None:
    argv = ["station", "add", "a", "--resource", "sim://", "--serial", "S", "--geometry", "1,8,8",
            "--url", database_url]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--if-missing"]) == 0


def test_missing_chip_description_is_a_clear_error(database_url: str, capsys: Output) -> None:
    assert main(["station", "add", "b", "--resource", "sim://", "--url", database_url]) == 2
    assert "--serial and --geometry" in capsys.readouterr().err
