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
    header, *rows = listing.splitlines()[-2:]
    assert header.split("\t") == ["name", "resource", "chip", "tiles x rows x cols", "limit", "clock"]
    assert rows[0].startswith("bench-1\tTCPIP::10.0.0.5::5025::SOCKET\tPCM-042\t16x512x256")


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


def test_probe_of_a_board_nobody_serves_says_it_cannot_reach_it_and_nothing_else(
    database_url: str, capsys: Output
) -> None:
    from drivers.base import Geometry
    from drivers.sim.board import SimBoard
    from drivers.sim.server import serve_in_thread

    server = serve_in_thread(SimBoard(Geometry(1, 8, 8)), port=0)
    resource = server.resource  # TCPIP::127.0.0.1::PORT::SOCKET
    server.stop()  # nothing listens there any more
    argv = ["station", "add", "gone", "--resource", resource, "--probe", "--url", database_url]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"hwctl station: error: cannot reach the board at {resource}: ")
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert "safe state" not in captured.err + captured.out


def test_probe_of_a_sim_station_explains_that_its_chip_lives_in_the_worker(
    database_url: str, capsys: Output
) -> None:
    argv = ["station", "add", "lab-g", "--resource", "sim://?clock=virtual", "--probe", "--url", database_url]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--probe needs a running board" in err
    assert "--serial and --geometry" in err and "hwctl sim-chip" in err
    assert "unknown resource" not in err


@pytest.mark.parametrize(("resource", "clock"), [
    ("sim://?clock=virtual", "virtual"),
    ("sim://?rate=100", "accelerated"),
    ("socket://10.0.0.5:5025", "real"),
])  # fmt: skip
def test_the_clock_kind_defaults_to_what_the_resource_says(
    database_url: str, capsys: Output, resource: str, clock: str
) -> None:
    argv = ["station", "add", "s", "--resource", resource, "--serial", "S", "--geometry", "1,8,8",
            "--url", database_url]  # fmt: skip
    assert main(argv) == 0
    assert main(["station", "list", "--url", database_url]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(f"\t{clock}")


@pytest.mark.parametrize(
    ("name", "flags", "refusal"),
    [
        ("bench-1", ["--geometry", "1,2,-3"], "--geometry"),
        ("bench-1", ["--geometry", "0,512,256"], "--geometry"),
        ("bench-1", ["--geometry", "1,512,1"], "--geometry"),
        ("bench-1", ["--geometry", "5000,512,256"], "--geometry"),
        ("bad name!", ["--geometry", "1,2,2"], "name"),
        ("bench-1", ["--geometry", "1,2,2", "--limit-ua", "nan"], "--limit-ua"),
        ("bench-1", ["--geometry", "1,2,2", "--limit-ua", "-1"], "--limit-ua"),
        ("bench-1", ["--geometry", "1,2,2", "--limit-ua", "2000"], "--limit-ua"),
    ],
)
def test_a_station_the_api_would_refuse_is_refused_here_too(
    database_url: str, capsys: Output, name: str, flags: list[str], refusal: str
) -> None:
    """Registered anyway, it broke GET /stations and the dashboard (its geometry no longer
    validates as a response: 500 on every listing)."""
    argv = ["station", "add", name, "--resource", "TCPIP::10.0.0.5::5025::SOCKET", "--serial", "PCM-1"]
    assert main([*argv, *flags, "--url", database_url]) == 2
    (message,) = capsys.readouterr().err.strip().splitlines()
    assert refusal in message
    assert main(["station", "list", "--url", database_url]) == 0
    assert capsys.readouterr().out.strip().splitlines()[1:] == []
