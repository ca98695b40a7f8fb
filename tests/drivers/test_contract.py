"""One contract, three transports: in-process, pyvisa over TCP, pyserial over TCP."""

from __future__ import annotations

import numpy as np
import pytest

from drivers import protocol as p
from drivers.base import Chip, Identity
from drivers.chip import ChipDriver
from drivers.errors import BoardError, LimitError
from drivers.sim.board import SimBoard
from drivers.sim.server import ServerThread
from drivers.transports.factory import open_transport
from tests.drivers.conftest import SMALL, TIMEOUT_S


def _state(board: SimBoard) -> list[np.ndarray]:
    array = board.array
    return [array.g_state_us.copy(), array.drift_nu.copy(), array.t_programmed_s.copy()]


def test_driver_implements_the_chip_protocol(chip: ChipDriver) -> None:
    assert isinstance(chip, Chip)


def test_identify_and_geometry(chip: ChipDriver) -> None:
    assert chip.identify() == Identity("hwctl", "SIMPCM-90NM", "SIM-0001", "sim-0.1")
    assert chip.geometry() == SMALL


def test_reset_then_set_pulses_raise_conductance(chip: ChipDriver) -> None:
    """A program-and-verify-shaped round trip: reset, several SET pulses, read back."""
    addresses = np.arange(SMALL.n_devices, dtype=np.uint32)
    chip.reset(addresses)
    after_reset = chip.read_block(addresses)
    assert after_reset.dtype == np.float32 and after_reset.shape == (SMALL.n_devices,)
    assert float(np.median(after_reset)) < 0.5
    for _ in range(3):
        chip.set_pulse(addresses, np.full(addresses.size, 150.0, np.float32))
    programmed = chip.read_block(addresses)
    assert float(np.median(programmed)) > float(np.median(after_reset)) + 5.0


def test_read_region_matches_the_addressed_read(chip: ChipDriver, board: SimBoard) -> None:
    region = chip.read_region(1, 2, 3, 4, 5)
    assert region.shape == (4, 5) and region.dtype == np.float32
    assert chip.last_read_time_s() == chip.board_time_s()


def test_limits(chip: ChipDriver) -> None:
    assert chip.max_amplitude_ua() == 500.0
    chip.set_amplitude_limit_ua(200.0)
    assert chip.amplitude_limit_ua() == 200.0
    with pytest.raises(BoardError) as caught:
        chip.set_amplitude_limit_ua(600.0)
    assert caught.value.code == p.ERR_DATA_OUT_OF_RANGE
    assert chip.amplitude_limit_ua() == 200.0


def test_over_limit_pulse_is_rejected_not_clipped(chip: ChipDriver, board: SimBoard) -> None:
    addresses = np.arange(100, dtype=np.uint32)
    amplitudes = np.full(100, 90.0, np.float32)
    amplitudes[42] = 101.0
    chip.set_amplitude_limit_ua(100.0)
    before = _state(board)
    with pytest.raises(LimitError, match="device 42"):
        chip.set_pulse(addresses, amplitudes)
    # The board refuses it too when a host skips the check.
    chip.transport.write(p.encode_command("PULS:SET", addresses, amplitudes))
    with pytest.raises(BoardError) as caught:
        p.check_line(chip.transport.read_response().payload, "PULS:SET")
    assert caught.value.code == p.ERR_DATA_OUT_OF_RANGE
    for old, new in zip(before, _state(board), strict=True):
        np.testing.assert_array_equal(old, new)


def test_safe_state(chip: ChipDriver, board: SimBoard) -> None:
    chip.reset(np.arange(4, dtype=np.uint32))
    assert board.pulser_enabled
    chip.safe_state()
    assert not board.pulser_enabled


def test_time_advance(chip: ChipDriver) -> None:
    start_s = chip.board_time_s()
    chip.advance_time_s(3600.0)
    assert chip.board_time_s() == pytest.approx(start_s + 3600.0)
    with pytest.raises(BoardError):
        chip.advance_time_s(-1.0)


def test_context_manager_leaves_the_board_safe(chip: ChipDriver, board: SimBoard) -> None:
    with pytest.raises(RuntimeError), chip:
        chip.reset(np.arange(4, dtype=np.uint32))
        raise RuntimeError("campaign crashed")
    assert not board.pulser_enabled


def test_closing_one_visa_session_leaves_the_others_of_the_process_working(
    board: SimBoard, server: ServerThread
) -> None:
    first = ChipDriver(open_transport(server.resource, timeout_s=TIMEOUT_S))
    second = ChipDriver(open_transport(server.resource, timeout_s=TIMEOUT_S))
    try:
        first.close()
        assert second.board_time_s() >= 0.0
    finally:
        second.close()
