"""Faults on the wire: bad commands, dropped links, restarts, garbage, slow boards."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from drivers import protocol as p
from drivers.chip import ChipDriver
from drivers.errors import BoardError, LinkError, ProtocolError
from drivers.sim.board import SimBoard
from drivers.sim.server import ServerThread, SimChipServer, serve_in_thread
from drivers.transports.factory import open_transport
from tests.drivers.conftest import SHORT_TIMEOUT_S, TIMEOUT_S, resource_for

MARGIN_S = 1.5


def _raw(chip: ChipDriver, header: bytes | str, *args: str | float | np.ndarray) -> str:
    """Send a command the driver would never send; return the checked reply line."""
    parts = [header] if isinstance(header, bytes) else p.encode_command(header, *args)
    chip.transport.write(parts)
    return p.check_line(chip.transport.read_response().payload, str(header))


def test_unknown_command_is_113_and_queued(chip: ChipDriver) -> None:
    with pytest.raises(BoardError) as caught:
        _raw(chip, "FOO:BAR?")
    assert caught.value.code == p.ERR_UNDEFINED_HEADER
    assert chip.errors() == [(p.ERR_UNDEFINED_HEADER, "Undefined header 'FOO:BAR?'")]
    assert chip.identify().vendor == "hwctl"  # still in sync


def test_wrong_argument_kind_is_a_command_error(chip: ChipDriver) -> None:
    with pytest.raises(BoardError, match="expected addr-block") as caught:
        _raw(chip, b"PULS:RES 12\n")
    assert caught.value.code == p.ERR_COMMAND


def test_malformed_block_gets_an_error_then_the_link_closes(impatient_chip: ChipDriver) -> None:
    chip = impatient_chip
    with pytest.raises(BoardError, match="malformed block header"):
        _raw(chip, b"PULS:RES #x12\n")
    started = time.monotonic()
    with pytest.raises(LinkError):
        chip.identify()
    assert time.monotonic() - started < SHORT_TIMEOUT_S + MARGIN_S


def test_disconnect_mid_command_is_a_link_error_within_the_timeout(impatient_chip: ChipDriver) -> None:
    chip = impatient_chip
    _raw(chip, "SIM:FAUL:DISC")
    started = time.monotonic()
    with pytest.raises(LinkError):
        chip.read_block(np.arange(10, dtype=np.uint32))
    assert time.monotonic() - started < SHORT_TIMEOUT_S + MARGIN_S
    with pytest.raises(LinkError, match="open a new driver"):
        chip.identify()


@pytest.mark.parametrize("kind", ["visa-tcp", "serial-tcp"])
def test_server_restart_gives_a_link_error_then_a_new_driver_works(kind: str, board: SimBoard) -> None:
    first = serve_in_thread(board)
    chip = ChipDriver(open_transport(resource_for(kind, first), timeout_s=SHORT_TIMEOUT_S))
    assert chip.geometry().tiles == 2
    first.stop()
    with pytest.raises(LinkError):
        chip.geometry()
    second = ServerThread(SimChipServer(board, port=first.port, watchdog_s=None))
    try:
        with ChipDriver(open_transport(resource_for(kind, second), timeout_s=SHORT_TIMEOUT_S)) as fresh:
            assert fresh.geometry().tiles == 2
    finally:
        chip.close()
        second.stop()


def test_refused_connection_is_a_link_error(board: SimBoard) -> None:
    handle = serve_in_thread(board)
    handle.stop()
    for kind in ("visa-tcp", "serial-tcp"):
        with pytest.raises(LinkError):
            ChipDriver(open_transport(resource_for(kind, handle), timeout_s=SHORT_TIMEOUT_S)).identify()


@pytest.mark.parametrize("resource", ["sim://?clock=virtual", "http://lab-board:5025", "board-7"])
def test_an_unknown_resource_is_refused_naming_the_documented_forms(resource: str) -> None:
    with pytest.raises(ValueError) as caught:
        open_transport(resource)
    message = str(caught.value)
    assert repr(resource) in message
    for form in ("TCPIP::host::port::SOCKET", "ASRL", "::INSTR", "socket://host:port"):
        assert form in message
    assert "inproc://" not in message  # an in-process test double, not something a user types


def test_garbled_reply_is_a_protocol_error_and_the_link_stays_in_sync(chip: ChipDriver) -> None:
    _raw(chip, "SIM:FAUL:GARB")
    with pytest.raises(ProtocolError, match="garbled"):
        chip.identify()
    assert chip.identify().vendor == "hwctl"


def test_slow_reply_times_out_within_the_configured_timeout(impatient_chip: ChipDriver) -> None:
    _raw(impatient_chip, "SIM:FAUL:DEL", 5.0)
    started = time.monotonic()
    with pytest.raises(LinkError, match="no "):
        impatient_chip.identify()
    assert SHORT_TIMEOUT_S - 0.1 < time.monotonic() - started < SHORT_TIMEOUT_S + MARGIN_S


def test_too_much_data_is_223_and_the_stream_stays_in_sync(board: SimBoard) -> None:
    handle = ServerThread(SimChipServer(board, port=0, watchdog_s=None, max_block_bytes=64))
    try:
        with ChipDriver(open_transport(handle.resource, timeout_s=TIMEOUT_S)) as chip:
            with pytest.raises(BoardError) as caught:
                chip.read_block(np.arange(100, dtype=np.uint32))
            assert caught.value.code == p.ERR_TOO_MUCH_DATA
            assert chip.read_block(np.arange(16, dtype=np.uint32)).shape == (16,)
    finally:
        handle.stop()


def test_watchdog_puts_an_idle_board_in_safe_state(board: SimBoard) -> None:
    handle = ServerThread(SimChipServer(board, port=0, watchdog_s=0.2))
    try:
        with ChipDriver(open_transport(handle.resource, timeout_s=TIMEOUT_S)) as chip:
            chip.reset(np.arange(4, dtype=np.uint32))
            assert board.pulser_enabled
            time.sleep(0.7)
            assert not board.pulser_enabled
            assert [code for code, _ in chip.errors()] == [p.ERR_WATCHDOG]
    finally:
        handle.stop()


def test_exit_on_a_dead_link_keeps_the_original_error_and_warns_nobody(
    board: SimBoard, server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    chip = ChipDriver(open_transport(resource_for("serial-tcp", server), timeout_s=SHORT_TIMEOUT_S))
    with caplog.at_level(logging.DEBUG, "drivers.chip"), pytest.raises(LinkError) as caught, chip:
        _raw(chip, "SIM:FAUL:DISC")
        chip.identify()
    assert "SAFE" not in str(caught.value)
    assert [r.levelno for r in caplog.records if "safe state" in r.getMessage()] == [logging.DEBUG]


def test_a_link_that_never_came_up_gives_only_its_own_error(
    board: SimBoard, caplog: pytest.LogCaptureFixture
) -> None:
    handle = serve_in_thread(board)
    handle.stop()  # nothing listens on the port any more
    chip = ChipDriver(open_transport(handle.resource, timeout_s=SHORT_TIMEOUT_S))
    with caplog.at_level(logging.WARNING), pytest.raises(LinkError) as caught, chip:
        chip.geometry()
    assert "link down" not in str(caught.value)
    assert caplog.records == []


def test_exit_on_a_live_link_whose_safe_state_fails_logs_an_error_and_keeps_the_original(
    chip: ChipDriver, caplog: pytest.LogCaptureFixture
) -> None:
    _raw(chip, "SIM:FAUL:GARB")  # the next reply, SAFE's, comes back garbled
    with caplog.at_level(logging.ERROR), pytest.raises(KeyError), chip:
        raise KeyError("the caller's own failure")
    assert "could not put" in caplog.text


@pytest.mark.parametrize("amplitude", [-100.0, float("nan")])
def test_a_negative_or_nan_amplitude_is_named_outside_the_range_not_over_the_limit(
    board: SimBoard, amplitude: float
) -> None:
    """It was refused, but as "-100.0 uA exceeds the limit 500.0 uA"."""
    with pytest.raises(BoardError) as refused:
        board.set_pulse(np.array([5], np.uint32), np.array([amplitude], np.float32))
    assert refused.value.code == p.ERR_DATA_OUT_OF_RANGE
    assert "outside [0, 500.0] uA" in refused.value.message and "exceeds" not in refused.value.message
