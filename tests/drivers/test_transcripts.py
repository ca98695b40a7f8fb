"""Every driver method as its exact byte-level conversation with the board."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.base import Geometry, Identity
from drivers.errors import BoardError, LimitError, ProtocolError
from tests.drivers.expected_protocol import expected_protocol


def block(values: np.ndarray) -> bytes:
    body = values.tobytes()
    return b"#%d%d" % (len(str(len(body))), len(body)) + body


ADDR = np.array([0, 5, 10], dtype="<u4")
AMPS = np.array([60.0, 80.0, 100.0], dtype="<f4")
COND = np.array([1.5, 10.0, 20.25], dtype="<f4")


def test_identify() -> None:
    with expected_protocol([(b"*IDN?\n", b"hwctl,SIMPCM-90NM,SIM-7,sim-0.1\n")]) as chip:
        assert chip.identify() == Identity("hwctl", "SIMPCM-90NM", "SIM-7", "sim-0.1")


def test_geometry() -> None:
    with expected_protocol([(b"ARR:SIZE?\n", b"2,64,32\n")]) as chip:
        assert chip.geometry() == Geometry(2, 64, 32)


def test_reset_sends_an_address_block() -> None:
    with expected_protocol([(b"PULS:RES " + block(ADDR) + b"\n", b"OK,3\n")]) as chip:
        chip.reset(ADDR)


def test_set_pulse_checks_the_limit_once_then_sends_two_blocks() -> None:
    script = [
        (b"SYST:LIM:AMPL?\n", b"200.0\n"),
        (b"PULS:SET " + block(ADDR) + b"," + block(AMPS) + b"\n", b"OK,3\n"),
        (b"PULS:SET " + block(ADDR) + b"," + block(AMPS) + b"\n", b"OK,3\n"),
    ]
    with expected_protocol(script) as chip:
        chip.set_pulse(ADDR, AMPS)
        chip.set_pulse(ADDR.astype(np.int64), AMPS.astype(np.float64))  # converted, not refused


def test_over_limit_pulse_is_rejected_before_sending() -> None:
    script = [(b"SYST:LIM:AMPL?\n", b"90.0\n")]
    with expected_protocol(script) as chip, pytest.raises(LimitError, match="device 10"):
        chip.set_pulse(ADDR, AMPS)


def test_read_block_returns_float32_conductances() -> None:
    with expected_protocol([(b"MEAS:COND? " + block(ADDR) + b"\n", block(COND) + b"\n")]) as chip:
        values = chip.read_block(ADDR)
    assert values.dtype == np.float32 and values.tolist() == COND.tolist()


def test_large_requests_are_split_into_blocks_of_max_block_devices() -> None:
    script = [
        (b"MEAS:COND? " + block(ADDR[:2]) + b"\n", block(COND[:2]) + b"\n"),
        (b"MEAS:COND? " + block(ADDR[2:]) + b"\n", block(COND[2:]) + b"\n"),
    ]
    with expected_protocol(script) as chip:
        chip.max_block_devices = 2
        assert chip.read_block(ADDR).tolist() == COND.tolist()


def test_read_region() -> None:
    with expected_protocol([(b"MEAS:COND:REG? 1,2,3,1,3\n", block(COND) + b"\n")]) as chip:
        assert chip.read_region(1, 2, 3, 1, 3).shape == (1, 3)


@pytest.mark.parametrize(
    ("method", "command", "reply", "expected"),
    [
        ("board_time_s", b"SYST:TIME?\n", b"12.5\n", 12.5),
        ("temperature_c", b"SYST:TEMP?\n", b"25.0\n", 25.0),
        ("amplitude_limit_ua", b"SYST:LIM:AMPL?\n", b"150.0\n", 150.0),
        ("max_amplitude_ua", b"SYST:LIM:AMPL:MAX?\n", b"500.0\n", 500.0),
        ("last_read_time_s", b"MEAS:TIME?\n", b"3600.0\n", 3600.0),
    ],
)
def test_value_queries(method: str, command: bytes, reply: bytes, expected: float) -> None:
    with expected_protocol([(command, reply)]) as chip:
        assert getattr(chip, method)() == expected


def test_set_amplitude_limit() -> None:
    with expected_protocol([(b"SYST:LIM:AMPL 120.0\n", b"OK\n")]) as chip:
        chip.set_amplitude_limit_ua(120)


def test_safe_state() -> None:
    with expected_protocol([(b"SAFE\n", b"OK\n")]) as chip:
        chip.safe_state()


def test_advance_time() -> None:
    with expected_protocol([(b"SIM:TIME:ADV 86400.0\n", b"OK\n")]) as chip:
        chip.advance_time_s(86400)


def test_errors_drain_the_queue() -> None:
    script = [
        (b"SYST:ERR?\n", b'-113,"Undefined header \'FOO\'"\n'),
        (b"SYST:ERR?\n", b'-222,"say ""hi"""\n'),
        (b"SYST:ERR?\n", b'+0,"No error"\n'),
    ]
    with expected_protocol(script) as chip:
        assert chip.errors() == [(-113, "Undefined header 'FOO'"), (-222, 'say "hi"')]


def test_clear_errors() -> None:
    with expected_protocol([(b"*CLS\n", b"OK\n")]) as chip:
        chip.clear_errors()


def test_err_reply_raises_board_error_with_code() -> None:
    with expected_protocol([(b"SAFE\n", b'ERR,+100,"busy"\n')]) as chip, pytest.raises(BoardError) as caught:
        chip.safe_state()
    assert (caught.value.code, caught.value.command) == (100, "SAFE")


def test_a_block_where_a_line_is_due_is_a_protocol_error() -> None:
    with expected_protocol([(b"SAFE\n", block(COND) + b"\n")]) as chip, pytest.raises(ProtocolError):
        chip.safe_state()


def test_context_manager_goes_safe_on_exit_even_after_an_exception() -> None:
    script = [(b"ARR:SIZE?\n", b"garbage\n"), (b"SAFE\n", b"OK\n")]
    with pytest.raises(ProtocolError), expected_protocol(script) as chip, chip:
        chip.geometry()
