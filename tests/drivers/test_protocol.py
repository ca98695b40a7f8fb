"""The codec and the command table: framing, blocks, and docs that cannot drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drivers import protocol as p
from drivers.errors import BoardError, ProtocolError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _wire(header: str, *args: str | float | int | np.ndarray) -> bytes:
    return b"".join(bytes(part) for part in p.encode_command(header, *args))


def test_docs_contain_exactly_the_rendered_command_table() -> None:
    assert p.render_markdown_table() in DOCS.read_text(encoding="utf-8")


@pytest.mark.parametrize("render", [p.render_markdown_errors, p.render_markdown_limits])
def test_docs_contain_exactly_the_rendered_error_codes_and_limits(render: object) -> None:
    assert callable(render)
    assert render() in DOCS.read_text(encoding="utf-8")


def test_every_numeric_argument_has_a_finite_range() -> None:
    numeric = [(c.header, a) for c in p.COMMANDS for a in c.args if not a.is_block]
    assert numeric, "the table has numeric arguments"
    for header, arg in numeric:
        assert arg.name, f"{header}: a numeric argument needs a name"
        assert -1e300 < arg.low < arg.high < 1e300, f"{header} <{arg.name}>: range not set"


def test_every_core_command_is_in_the_table() -> None:
    core = {"*IDN?", "ARR:SIZE?", "PULS:RES", "PULS:SET", "MEAS:COND?", "SYST:ERR?",
            "SYST:LIM:AMPL", "SYST:LIM:AMPL:MAX?", "SAFE", "SIM:TIME:ADV"}
    assert core <= set(p.BY_HEADER)


def test_block_is_ieee_definite_length() -> None:
    wire = _wire("MEAS:COND?", np.array([1, 2, 258], dtype=np.uint32))
    assert wire == b"MEAS:COND? #212" + np.array([1, 2, 258], "<u4").tobytes() + b"\n"


def test_parser_frames_blocks_containing_newlines_fed_byte_by_byte() -> None:
    addresses = np.array([10, 0x0A0A0A0A], dtype=np.uint32)  # bytes 0x0a are "\n"
    amplitudes = np.array([100.5, 10.0], dtype=np.float32)
    wire = _wire("puls:set", addresses, amplitudes) + b"*IDN?\n"
    parser, events = p.CommandParser(), []
    for i in range(len(wire)):
        events += parser.feed(wire[i : i + 1])
    assert [e.header for e in events if isinstance(e, p.ParsedCommand)] == ["PULS:SET", "*IDN?"]
    first = events[0]
    assert isinstance(first, p.ParsedCommand)
    address_block, amplitude_block = first.args
    assert isinstance(address_block, bytearray) and isinstance(amplitude_block, bytearray)
    assert np.frombuffer(address_block, "<u4").tolist() == addresses.tolist()
    assert np.frombuffer(amplitude_block, "<f4").tolist() == amplitudes.tolist()


def test_text_arguments_are_split_on_commas() -> None:
    (event,) = p.CommandParser().feed(b"MEAS:COND:REG? 1, 2,3,4,5\n")
    assert event == p.ParsedCommand("MEAS:COND:REG?", ["1", "2", "3", "4", "5"])


def test_oversized_block_is_skipped_and_the_stream_stays_in_sync() -> None:
    parser = p.CommandParser(max_block_bytes=8)
    events = parser.feed(_wire("MEAS:COND?", np.arange(3, dtype=np.uint32)) + b"SAFE\n")
    assert isinstance(events[0], p.FramingError) and events[0].code == p.ERR_TOO_MUCH_DATA
    assert not events[0].fatal
    assert events[1] == p.ParsedCommand("SAFE", [])


@pytest.mark.parametrize("wire", [b"PULS:RES #0\n", b"PULS:RES #2x1\n", b"PULS:RES #A\n"])
def test_malformed_block_header_is_fatal(wire: bytes) -> None:
    (event,) = p.CommandParser().feed(wire)
    assert isinstance(event, p.FramingError) and event.fatal and event.code == p.ERR_COMMAND


def test_endless_text_line_is_refused() -> None:
    (event,) = p.CommandParser(max_text_bytes=100).feed(b"A" * 500)
    assert isinstance(event, p.FramingError) and event.code == p.ERR_TOO_MUCH_DATA


def test_error_reply_round_trips_quotes() -> None:
    wire = p.encode_error(-222, 'limit "100" exceeded')
    with pytest.raises(BoardError) as caught:
        p.check_line(wire.rstrip(b"\n"), "PULS:SET")
    assert (caught.value.code, caught.value.message) == (-222, 'limit "100" exceeded')


def test_non_ascii_reply_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="garbled"):
        p.check_line(b"\xff\xfeOK", "SAFE")
