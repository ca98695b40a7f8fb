"""The board's framing, parser and dispatcher under arbitrary input (hypothesis).

Specification: every complete command gets exactly one well-formed reply, whatever the
bytes and wherever the stream is split, or the documented close (one ERR reply, then
the connection ends); a bug answers +199 and the connection stays usable; numeric
arguments outside their range, non-finite or unparseable change nothing; duplicate
addresses change nothing; the server stays up. The bulk runs in process on
`BoardSession` (the code the TCP server runs), a few hundred examples over real TCP.
"""

from __future__ import annotations

import math
import socket
import time
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import protocol as p
from drivers.base import Geometry
from drivers.sim.board import SimBoard
from drivers.sim.server import GARBLED_REPLY, BoardCore, BoardSession, Outgoing, ServerThread, serve_in_thread
from tests.drivers.fuzzing import (
    FUZZ_GEOMETRY,
    SOCKET_HEADERS,
    WIRE,
    Unit,
    block,
    numbers,
    split_replies,
    splits,
    units,
)

IDN_PREFIX = b"hwctl,"
STALL_S = 0.5
BLOCK_CAP = FUZZ_GEOMETRY.n_devices * 4


def new_session() -> BoardSession:
    return BoardSession(BoardCore(SimBoard(FUZZ_GEOMETRY, seed=5), watchdog_s=None))


def run(session: BoardSession, chunks: list[bytes]) -> list[Outgoing]:
    return [out for chunk in chunks for out in session.feed(chunk)]


def owed(stream: list[Unit]) -> tuple[int, bool]:
    """Replies the board owes for `stream`, and whether it ends in the documented close."""
    total = 0
    for unit in stream:
        total += unit.replies
        if unit.fatal:
            return total, True
    return total, False


def reply_bytes(outs: list[Outgoing]) -> list[bytes]:
    """One reply per `Outgoing`, each a single well-formed line or block."""
    replies = []
    for out in outs:
        data = b"".join(bytes(part) for part in out.parts)
        assert split_replies(data) == [data], f"not exactly one reply: {data[:60]!r}"
        replies.append(data)
    return replies


def assert_usable(session: BoardSession) -> None:
    """The connection answers; the first reply may be one an earlier `SIM:FAUL:GARB` garbled."""
    first, second = reply_bytes(session.feed(b"*IDN?\n*IDN?\n"))
    assert first.startswith(IDN_PREFIX) or first == GARBLED_REPLY
    assert second.startswith(IDN_PREFIX)


@settings(WIRE, max_examples=3000)
@given(st.lists(units(), min_size=1, max_size=6), st.data())
def test_every_complete_command_gets_exactly_one_reply_wherever_the_stream_is_split(
    stream: list[Unit], data: st.DataObject
) -> None:
    wire = b"".join(unit.wire for unit in stream)
    chunks = data.draw(splits(wire))
    session = new_session()
    outs = run(session, chunks)
    expected, closes = owed(stream)
    replies = reply_bytes(outs)
    assert len(replies) == expected
    assert [out.close for out in outs] == [False] * (expected - 1) + [closes] * (expected > 0)
    assert session.closed == closes
    # The same bytes in one piece give the same replies: framing does not depend on chunking.
    assert reply_bytes(run(new_session(), [wire])) == replies
    if not closes:
        assert_usable(session)


@settings(WIRE, max_examples=2500)
@given(st.binary(max_size=300), st.data())
def test_arbitrary_bytes_never_break_the_board(wire: bytes, data: st.DataObject) -> None:
    """Garbage gets well-formed replies, at most one per newline, the same however split;
    afterwards the connection answers, or is mid-command (its stall timer closes it), or
    was closed by the documented error."""
    session = new_session()
    replies = reply_bytes(run(session, data.draw(splits(wire))))
    assert len(replies) <= wire.count(b"\n") + 1
    assert reply_bytes(run(new_session(), [wire])) == replies
    if session.closed:
        assert replies and replies[-1].startswith(b"ERR,")
    elif session.parser.mid_command:
        closing = session.stalled(p.DEFAULT_STALL_TIMEOUT_S)
        assert closing.close and reply_bytes([closing])[0].startswith(f"ERR,{p.ERR_TIMEOUT:+d},".encode())
    else:
        assert_usable(session)


NUMERIC = [(c.header, i, a) for c in p.COMMANDS for i, a in enumerate(c.args) if not a.is_block]


def _valid_args(header: str) -> list[str]:
    return [str(int(a.low) if a.kind is p.Arg.INTEGER else a.high) for a in p.BY_HEADER[header].args]


def _state(session: BoardSession) -> tuple[float, float, float]:
    board = session.board
    return board.board_time_s(), board.amplitude_limit_ua(), session._delay_s


@settings(WIRE, max_examples=1500)
@given(st.sampled_from(NUMERIC), st.one_of(numbers, st.floats(allow_nan=False).map(repr)))
def test_a_numeric_argument_outside_its_range_or_not_a_finite_decimal_changes_nothing(
    target: tuple[str, int, p.Param], token: str
) -> None:
    header, index, param = target
    args = _valid_args(header)
    args[index] = token
    session = new_session()
    before = _state(session)
    (out,) = session.feed(f"{header} {','.join(args)}\n".encode("utf-8", "replace"))
    reply = reply_bytes([out])[0]
    try:
        value = p.parse_number(token, integral=param.kind is p.Arg.INTEGER)
    except ValueError:
        assert reply.startswith(f"ERR,{p.ERR_COMMAND:+d},".encode()), reply
    else:
        if param.check(value):
            assert reply.startswith(f"ERR,{p.ERR_DATA_OUT_OF_RANGE:+d},".encode()), reply
        else:
            assert math.isfinite(value)
    if reply.startswith(b"ERR,"):
        assert _state(session) == before
    assert_usable(session)


@settings(WIRE, max_examples=600)
@given(st.sampled_from(["PULS:RES", "PULS:SET", "MEAS:COND?"]), st.lists(st.integers(0, 63), max_size=40))
def test_an_address_twice_in_one_command_is_refused_and_nothing_is_applied(
    header: str, listed: list[int]
) -> None:
    session = new_session()
    addresses = np.array(listed, "<u4")
    args = [block(addresses.tobytes())]
    if header == "PULS:SET":
        args.append(block(np.full(addresses.size, 100.0, "<f4").tobytes()))
    before = _devices(session)
    (out,) = session.feed(header.encode() + b" " + b",".join(args) + b"\n")
    reply = reply_bytes([out])[0]
    if len(set(listed)) < len(listed):
        assert reply.startswith(f"ERR,{p.ERR_DUPLICATE_ADDRESS:+d},".encode()), reply
        for old, new in zip(before, _devices(session), strict=True):
            np.testing.assert_array_equal(old, new)
    else:
        assert not reply.startswith(b"ERR,"), reply


def _devices(session: BoardSession) -> list[np.ndarray]:
    array = session.board.array
    return [array.g_state_us.copy(), array.t_programmed_s.copy()]


class Boom(Exception):
    """A bug inside the board."""


@settings(WIRE, max_examples=300)
@given(
    st.sampled_from(["read_block", "reset", "set_pulse", "safe_state", "board_time_s", "identify"]),
    st.sampled_from([Boom, IndexError, KeyError, ZeroDivisionError, TypeError, MemoryError]),
)
def test_a_bug_in_the_board_answers_199_and_the_connection_stays_usable(
    method: str, error: type[Exception]
) -> None:
    session = new_session()
    calls = {"n": 0}

    def broken(*args: object) -> None:
        calls["n"] += 1
        raise error("injected")

    setattr(session.board, method, broken)
    wire = {
        "read_block": b"MEAS:COND? " + block(np.arange(3, dtype="<u4").tobytes()),
        "reset": b"PULS:RES " + block(np.arange(3, dtype="<u4").tobytes()),
        "set_pulse": b"PULS:SET " + block(np.arange(2, dtype="<u4").tobytes()) + b","
        + block(np.full(2, 80.0, "<f4").tobytes()),
        "safe_state": b"SAFE",
        "board_time_s": b"SYST:TIME?",
        "identify": b"*IDN?",
    }[method]
    (out,) = session.feed(wire + b"\n")
    assert calls["n"] == 1
    assert reply_bytes([out])[0].startswith(f"ERR,{p.ERR_INTERNAL:+d},".encode())
    assert not out.close
    (queued,) = session.feed(b"SYST:ERR?\n")
    assert reply_bytes([queued])[0].startswith(f"{p.ERR_INTERNAL:+d},".encode())
    if method != "identify":
        assert_usable(session)


def test_a_bug_in_framing_answers_199_and_closes_only_that_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = new_session()
    other = BoardSession(session.core)  # a second connection to the same board

    def broken(self: p.CommandParser, data: p.Buffer) -> list[p.ParsedCommand | p.FramingError]:
        raise Boom("injected")

    monkeypatch.setattr(session.parser, "feed", broken.__get__(session.parser))
    (out,) = session.feed(b"*IDN?\n")
    assert out.close and session.closed
    assert reply_bytes([out])[0].startswith(f"ERR,{p.ERR_INTERNAL:+d},".encode())
    assert session.feed(b"*IDN?\n") == []
    assert_usable(other)


# -- over a real socket ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tcp_server() -> Iterator[ServerThread]:
    handle = serve_in_thread(SimBoard(FUZZ_GEOMETRY, seed=5), stall_timeout_s=STALL_S)
    yield handle
    handle.stop()


def _read_replies(sock: socket.socket, count: int) -> tuple[list[bytes], bool]:
    """`count` replies (fewer if the board closes), and whether it closed afterwards."""
    data = b""
    while True:
        try:
            complete = split_replies(data)
        except (ValueError, AssertionError):
            complete = []  # a reply still arriving
        if len(complete) >= count:
            break
        chunk = sock.recv(1 << 16)
        if not chunk:
            return split_replies(data), True
        data += chunk
    return complete, False


@settings(WIRE, max_examples=300)
@given(st.lists(units(SOCKET_HEADERS), min_size=1, max_size=5), st.data())
def test_over_tcp_every_command_gets_one_reply_and_the_server_stays_up(
    tcp_server: ServerThread, stream: list[Unit], data: st.DataObject
) -> None:
    wire = b"".join(unit.wire for unit in stream)
    expected, closes = owed(stream)
    with socket.create_connection(("127.0.0.1", tcp_server.port), timeout=5.0) as sock:
        for chunk in data.draw(splits(wire)):
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                assert closes  # the board hung up after the documented fatal error
                break
        if not closes:  # twice: an earlier SIM:FAUL:GARB may garble the first
            sock.sendall(b"*IDN?\n*IDN?\n")
        replies, closed = _read_replies(sock, expected + 2 * (not closes))
    assert len(replies) == expected + 2 * (not closes)
    if closes:
        assert replies[-1].startswith(b"ERR,")
    else:
        assert replies[-1].startswith(IDN_PREFIX) and not closed
    with socket.create_connection(("127.0.0.1", tcp_server.port), timeout=5.0) as fresh:
        fresh.sendall(b"*IDN?\n")
        assert _read_replies(fresh, 1)[0][0].startswith(IDN_PREFIX)


def test_a_block_that_stalls_half_way_is_answered_365_and_closed(tcp_server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", tcp_server.port), timeout=10.0) as sock:
        sock.sendall(b"MEAS:COND? #240" + b"\0" * 12)  # 28 of the 40 declared bytes
        started = time.monotonic()
        replies, _ = _read_replies(sock, 1)
        assert sock.recv(1) == b""  # then the board closes the connection
    assert replies[0].startswith(f"ERR,{p.ERR_TIMEOUT:+d},".encode())
    assert STALL_S - 0.1 < time.monotonic() - started < STALL_S + 2.0


def test_a_header_declaring_a_gigabyte_reserves_nothing() -> None:
    session = BoardSession(BoardCore(SimBoard(FUZZ_GEOMETRY), watchdog_s=None), max_block_bytes=1 << 40)
    parser = p.CommandParser(max_block_bytes=1 << 40)
    tracemalloc.start()
    try:
        # `#9` + nine digits: 999,999,999 bytes, the most a definite-length block can declare.
        assert parser.feed(b"PULS:RES #9999999999" + b"\0" * 1000) == []
        assert session.feed(b"PULS:RES #9999999999" + b"\0" * 1000) == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert parser.mid_command and session.parser.mid_command
    # The board's own cap (devices × 4 bytes) refuses the block by its declared length.
    assert session.parser.max_block_bytes == BLOCK_CAP
    megabyte = b"\0" * (1 << 20)
    left = 999_999_999 - 1000  # the zeros were block bytes
    for _ in range(left // len(megabyte)):  # the declared bytes do come: skipped, never kept
        assert session.feed(megabyte) == []
    (out,) = session.feed(b"\0" * (left % len(megabyte)) + b"\n")
    assert reply_bytes([out])[0].startswith(f"ERR,{p.ERR_TOO_MUCH_DATA:+d},".encode())
    assert_usable(session)


def test_a_host_that_pipelines_commands_and_reads_nothing_holds_up_no_other_host() -> None:
    """100 whole-array reads (2 MiB replies), each followed by a clock step, sent at once by
    a host that never reads: the board runs them one reply at a time as the host takes
    them, so this host stalls on its own full socket while another is answered at once
    (run all in one go, they held every other host for seconds and queued 200 MiB)."""
    board = SimBoard(Geometry(tiles=1, rows=512, cols=1024), seed=5)  # a virtual clock
    handle = serve_in_thread(board)
    try:
        greedy = socket.create_connection(("127.0.0.1", handle.port), timeout=5.0)
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        greedy.sendall(b"MEAS:COND:REG? 0,0,0,512,1024\nSIM:TIME:ADV 1\n" * 100)
        time.sleep(0.5)  # not a bound: time for the board to fill the greedy host's socket
        with socket.create_connection(("127.0.0.1", handle.port), timeout=30.0) as other:
            other.sendall(b"SYST:TIME?\n")
            (reply,), _ = _read_replies(other, 1)
        greedy.close()
    finally:
        handle.stop()
    assert float(reply) < 50, f"the other host was answered only after {float(reply):g} of 100 steps"
