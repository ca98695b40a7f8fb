"""The board faults the suite injects over the wire, and the safe-state query it asks:
`SIM:POW:CYC` (a power cycle: volatile state lost unless the chip has a state file) and
`SIM:SAFE?` (lines grounded, pulser off), on a simulated chip behind a real TCP server."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from drivers import protocol as p
from drivers.base import Geometry
from drivers.chip import ChipDriver
from drivers.errors import BoardError
from drivers.protocol import ERR_NO_READ_YET, ERR_UNDEFINED_HEADER
from drivers.sim.board import SimBoard
from drivers.sim.server import serve_in_thread
from drivers.transports.factory import open_transport
from tests.faults.lab import BoardProbe

GEOMETRY = Geometry(1, 16, 16)
DEVICES = np.arange(0, 64, dtype=np.uint32)
WATCHDOG_S = 0.4


@contextlib.contextmanager
def serve(board: SimBoard, watchdog_s: float | None = None) -> Iterator[tuple[ChipDriver, BoardProbe]]:
    server = serve_in_thread(board, watchdog_s=watchdog_s)
    resource = f"socket://127.0.0.1:{server.port}"
    chip = ChipDriver(open_transport(resource))
    try:
        yield chip, BoardProbe(resource)
    finally:
        chip.close()
        server.stop()


@pytest.fixture
def volatile() -> Iterator[tuple[ChipDriver, BoardProbe]]:
    with serve(SimBoard(GEOMETRY, seed=1)) as served:
        yield served


@pytest.fixture
def with_state(tmp_path: Path) -> Iterator[tuple[ChipDriver, BoardProbe]]:
    board = SimBoard(GEOMETRY, seed=1, state_path=tmp_path / "chip.state")
    with serve(board) as served:
        yield served
    board.close()


def reply(chip: ChipDriver, header: str) -> str:
    """One command's raw reply line."""
    chip.transport.write(p.encode_command(header))
    return chip.transport.read_response().payload.decode()


def program(chip: ChipDriver) -> np.ndarray:
    chip.set_pulse(DEVICES, np.full(DEVICES.size, 150.0, np.float32))
    chip.advance_time_s(100.0)
    return chip.read_block(DEVICES)


def test_a_power_cycle_blanks_a_volatile_board_restarts_its_clock_and_clears_its_queue(
    volatile: tuple[ChipDriver, BoardProbe],
) -> None:
    chip, probe = volatile
    before_us = program(chip)
    assert before_us.mean() > 1.0
    for _ in range(2):
        assert reply(chip, "NO:SUCH:COMMAND").startswith(f"ERR,{ERR_UNDEFINED_HEADER:+d}")
    assert reply(chip, "SYST:ERR?").startswith(f"{ERR_UNDEFINED_HEADER:+d}")  # one popped, one queued
    probe.power_cycle()
    assert chip.board_time_s() == 0.0
    assert chip.read_block(DEVICES).mean() < 0.1 * before_us.mean()
    assert chip.errors() == []  # the queued one went with the power


def test_a_power_cycle_of_a_board_with_a_state_file_keeps_devices_and_clock(
    with_state: tuple[ChipDriver, BoardProbe],
) -> None:
    chip, probe = with_state
    before_us = program(chip)
    board_time_s = chip.board_time_s()
    probe.power_cycle()
    assert chip.board_time_s() >= board_time_s
    after_us = chip.read_block(DEVICES)
    assert np.median(after_us / before_us) == pytest.approx(1.0, abs=0.1)


def test_the_last_read_time_goes_with_the_power(volatile: tuple[ChipDriver, BoardProbe]) -> None:
    chip, probe = volatile
    program(chip)
    probe.power_cycle()
    with pytest.raises(BoardError) as refused:
        chip.last_read_time_s()
    assert refused.value.code == ERR_NO_READ_YET


def test_safe_state_is_reported_after_safe_and_after_the_watchdog_not_while_pulsing() -> None:
    with serve(SimBoard(GEOMETRY, seed=1), watchdog_s=WATCHDOG_S) as (chip, probe):
        chip.set_pulse(DEVICES[:4], np.full(4, 100.0, np.float32))
        assert not probe.is_safe()
        chip.safe_state()
        assert probe.is_safe()
        chip.set_pulse(DEVICES[:4], np.full(4, 100.0, np.float32))  # the pulser is back on
        assert not probe.is_safe()
        time.sleep(WATCHDOG_S * 1.25 + 0.6)  # the host says nothing: the watchdog grounds the board
        assert probe.is_safe()
