"""Hypothesis profile and wire strategies shared by the board and driver fuzz tests.

Profile: in CI (`CI=true`) examples are derandomized, so every CI run checks the same
examples and a failure reproduces anywhere; on a developer's machine hypothesis explores
new examples each run. Neither keeps an example database (no `.hypothesis/` in the
checkout): a failure prints its example and `@reproduce_failure` blob. Budgets per test
are set where they are used and add up to >= 10,000 examples per run.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from drivers import protocol as p
from drivers.base import Geometry

settings.register_profile(
    "wire-ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "wire-dev",
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
WIRE = settings.get_profile("wire-ci" if os.environ.get("CI") else "wire-dev")

FUZZ_GEOMETRY = Geometry(tiles=1, rows=8, cols=8)  # 64 devices: blocks over 256 bytes are refused
BLOCK_CAP_BYTES = FUZZ_GEOMETRY.n_devices * p.ADDRESS_DTYPE.itemsize
# Faults that change what later replies look like on a real socket (a delayed or dropped
# link) are exercised by their own tests; in-process streams keep the delay (only a number).
STREAM_HEADERS = [c.header for c in p.COMMANDS if c.header != "SIM:FAUL:DISC"]
SOCKET_HEADERS = [h for h in STREAM_HEADERS if h != "SIM:FAUL:DEL"]


def block(payload: bytes) -> bytes:
    length = str(len(payload)).encode()
    return b"#" + str(len(length)).encode() + length + payload


@dataclass(frozen=True)
class Unit:
    """One complete command line on the wire and what the board owes for it."""

    wire: bytes
    replies: int  # 1, or 0 for a blank line
    fatal: bool = False  # the documented close: one ERR reply, then the connection ends


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**12), 10**12).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "1_0", "0x10", "", " ", "+", ".", "1e", "١"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="#,\n"), max_size=12),
)
addresses = st.lists(st.integers(0, FUZZ_GEOMETRY.n_devices + 2), max_size=24).map(
    lambda xs: np.array(xs, "<u4").tobytes()
)
amplitudes = st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=24).map(
    lambda xs: np.array(xs, "<f4").tobytes()
)
raw_blocks = st.one_of(addresses, amplitudes, st.binary(max_size=40), st.binary(min_size=257, max_size=600))
safe_text = st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"").replace(b"#", b""))


def in_range(param: p.Param) -> st.SearchStrategy[str]:
    if param.kind is p.Arg.INTEGER:
        return st.integers(int(param.low), int(param.high)).map(str)
    return st.floats(param.low, param.high, exclude_min=param.low_open).map(repr)


@st.composite
def commands(draw: st.DrawFn, headers: list[str] = STREAM_HEADERS) -> Unit:
    """A command from the table (header in any case) with arguments that may be wrong."""
    header = draw(st.sampled_from(headers))
    spec = p.BY_HEADER[header]
    lower = draw(st.integers(0, (1 << len(header)) - 1))  # which letters arrive in lower case
    header = "".join(c.lower() if lower >> i & 1 else c for i, c in enumerate(header))
    n_args = len(spec.args) if draw(st.integers(0, 9)) else draw(st.integers(0, 6))
    args = []
    for i in range(n_args):
        param = spec.args[i] if i < len(spec.args) else None
        fitting = param is not None and draw(st.integers(0, 5)) > 0  # mostly the right kind
        if fitting and param is not None and param.is_block:
            args.append(block(draw(addresses if param.kind is p.Arg.ADDRESSES else amplitudes)))
        elif fitting and param is not None:
            args.append(draw(st.one_of(numbers, in_range(param))).encode())
        else:
            args.append(draw(st.one_of(raw_blocks.map(block), numbers.map(str.encode))))
    line = header.encode() + (b" " + b",".join(args) if args else b"") + b"\n"
    return Unit(line, 1)


@st.composite
def junk_lines(draw: st.DrawFn) -> Unit:
    """A line of arbitrary text without blocks: blank lines are owed nothing."""
    text = draw(safe_text)
    return Unit(text + b"\n", 0 if not text.decode("ascii", "replace").strip() else 1)


@st.composite
def framing_faults(draw: st.DrawFn) -> Unit:
    """Blocks the board must refuse: over the size cap, a third block, or a bad header."""
    kind = draw(st.sampled_from(["oversized", "third", "empty", "bad-header", "long-text"]))
    if kind == "oversized":
        body = draw(st.binary(min_size=BLOCK_CAP_BYTES + 1, max_size=BLOCK_CAP_BYTES + 64))
        return Unit(b"MEAS:COND? " + block(body) + b"\n", 1)
    if kind == "third":
        return Unit(b"PULS:SET " + b",".join([block(b"\0\0\0\0")] * 3) + b"\n", 1)
    if kind == "empty":
        return Unit(b"PULS:RES #10\n", 1)
    if kind == "bad-header":
        bad = draw(st.sampled_from([b"#0", b"#A", b"#2x1", b"#3 12", b"#\n"]))
        return Unit(b"PULS:RES " + bad + b"\n", 1, fatal=True)
    return Unit(b"A" * (p.MAX_TEXT_BYTES + 1) + b"\n", 1, fatal=True)


def units(headers: list[str] = STREAM_HEADERS) -> st.SearchStrategy[Unit]:
    return st.one_of(commands(headers), commands(headers), junk_lines(), framing_faults())


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` cut at arbitrary points (sometimes byte by byte)."""
    # One draw for all cut points (each pair of bytes is a position): cheap to generate.
    raw = draw(st.binary(max_size=24))
    if raw[:1] == b"\0":
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted({int.from_bytes(raw[i : i + 2], "little") % (len(data) + 1) for i in range(0, len(raw), 2)})
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def split_replies(data: bytes) -> list[bytes]:
    """Concatenated replies → one item per reply; AssertionError if the framing is broken."""
    replies, pos = [], 0
    while pos < len(data):
        if data[pos : pos + 1] == b"#":
            digits = int(data[pos + 1 : pos + 2])
            length = int(data[pos + 2 : pos + 2 + digits])
            end = pos + 2 + digits + length
            assert data[end : end + 1] == b"\n", f"block reply without its newline: {data[pos:pos+40]!r}"
        else:
            end = data.index(b"\n", pos)
        replies.append(data[pos : end + 1])
        pos = end + 1
    return replies
