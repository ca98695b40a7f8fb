"""Readouts in blocks (revision 0008): a readback's blocks become its readout, readers
stream them one block at a time, and readouts stored whole before 0008 read the same."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import Engine, func, insert, select, update

from hwctl.mapping import DeviceMap
from hwctl.queue import enqueue_in
from hwctl.store import readouts as store_readouts
from hwctl.store.errors import CorruptVectorError, StoreError
from hwctl.store.readouts import (
    ProgrammingResult,
    ReadoutBlock,
    add_readout,
    add_readout_block,
    device_series,
    finish_readout,
    iter_readout_blocks,
    iter_readout_ranges,
    load_readout,
    readout_block_extents,
    readout_sample_us,
)
from hwctl.store.schema import readout_blocks, readouts
from hwctl.store.vectors import encode

BLOCK = 10  # devices per block in these tests (the test network maps 108 devices: 11 blocks, the last of 8)


def _readback_job(engine: Engine, station_id: int) -> int:
    with engine.begin() as conn:
        return int(enqueue_in(conn, kind="readback", station_id=station_id, run_at_s=0.0).id)


def _g(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 25, n).astype(np.float32)


def test_a_readback_s_blocks_become_its_readout_without_a_copy(
    engine: Engine,
    programmed_run: tuple[int, ProgrammingResult],
    device_map: DeviceMap,
    station_ids: list[int],
) -> None:
    run, _ = programmed_run
    n, g = device_map.n_devices, _g(device_map.n_devices, 1)
    job = _readback_job(engine, station_ids[0])
    starts = [(first, 2_000.0 + first) for first in range(0, n, BLOCK)]
    with engine.begin() as conn:
        for first, read_s in starts:
            add_readout_block(conn, job, ReadoutBlock(first, read_s, g[first : first + BLOCK]))
        block_ids = set(conn.execute(select(readout_blocks.c.id)).scalars())
        readout_id = finish_readout(
            conn, run, job, n_devices=n, offset_s=25.0, scheduled_s=2_000.0, board_time_s=2_000.0,
            block_starts=starts,
        )  # fmt: skip
    with engine.connect() as conn:
        assert (
            set(
                conn.execute(
                    select(readout_blocks.c.id).where(readout_blocks.c.readout_id == readout_id)
                ).scalars()
            )
            == block_ids
        )
        assert readout_block_extents(conn, job) == []  # the job keeps none
        assert conn.execute(
            select(readouts.c.g_blob, readouts.c.g_len).where(readouts.c.id == readout_id)
        ).one() == (None, n)
        np.testing.assert_array_equal(load_readout(conn, readout_id).g_us, g)
        assert [first for first, _ in iter_readout_blocks(conn, readout_id)] == [first for first, _ in starts]
        series = device_series(conn, run, 23)
    assert series.g_us.tolist() == [g[23]]


def test_a_readback_s_blocks_must_cover_every_device_in_order(
    engine: Engine,
    programmed_run: tuple[int, ProgrammingResult],
    device_map: DeviceMap,
    station_ids: list[int],
) -> None:
    run, _ = programmed_run
    n, g = device_map.n_devices, _g(device_map.n_devices, 2)
    job = _readback_job(engine, station_ids[0])
    with engine.begin() as conn:
        for first in (0, 2 * BLOCK):  # the block at device 10 is missing
            add_readout_block(conn, job, ReadoutBlock(first, 0.0, g[first : first + BLOCK]))
    with engine.begin() as conn, pytest.raises(StoreError, match="block at device 20 does not follow 10"):
        finish_readout(
            conn, run, job, n_devices=n, offset_s=25.0, scheduled_s=0.0, board_time_s=0.0, block_starts=[]
        )


def test_blocks_stream_one_at_a_time_and_a_window_reads_only_the_blocks_that_hold_it(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    run, _ = programmed_run
    n, g = device_map.n_devices, _g(device_map.n_devices, 3)
    monkeypatch.setattr(store_readouts, "STORED_BLOCK_DEVICES", BLOCK)
    with engine.begin() as conn:
        readout_id = add_readout(conn, run, offset_s=25.0, scheduled_s=0.0, board_time_s=0.0, g_us=g)
    with engine.connect() as conn:
        blocks = list(iter_readout_blocks(conn, readout_id))
        window = list(iter_readout_blocks(conn, readout_id, 15, 31))
        ranges = list(iter_readout_ranges(conn, readout_id, 7))
    assert [b.size for _, b in blocks] == [BLOCK] * (n // BLOCK) + [n % BLOCK]
    assert [first for first, _ in window] == [10, 20, 30]
    assert [r.size for r in ranges] == [7] * (n // 7) + [n % 7]
    np.testing.assert_array_equal(np.concatenate(ranges), g)


def test_a_corrupt_or_missing_block_is_an_error_where_it_is_reached(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    run, _ = programmed_run
    monkeypatch.setattr(store_readouts, "STORED_BLOCK_DEVICES", BLOCK)
    with engine.begin() as conn:
        readout_id = add_readout(
            conn, run, offset_s=25.0, scheduled_s=0.0, board_time_s=0.0, g_us=_g(device_map.n_devices, 4)
        )
        third = readout_blocks.c.readout_id == readout_id, readout_blocks.c.first_device == 2 * BLOCK
        conn.execute(update(readout_blocks).where(*third).values(g_blob=b"\x00" * 4 * BLOCK))
    with engine.connect() as conn:
        walk = iter_readout_blocks(conn, readout_id)
        assert [next(walk)[0], next(walk)[0]] == [0, BLOCK]  # the good blocks come first
        with pytest.raises(CorruptVectorError, match=r"block at device 20 of readout \d+: checksum mismatch"):
            next(walk)
    with engine.begin() as conn:
        conn.execute(readout_blocks.delete().where(*third))
    with (
        engine.connect() as conn,
        pytest.raises(CorruptVectorError, match="block at device 30 does not follow 20"),
    ):
        load_readout(conn, readout_id)
    with engine.connect() as conn, pytest.raises(CorruptVectorError, match="no stored block holds device 25"):
        device_series(conn, run, 25)


def test_a_readout_stored_whole_before_0008_reads_like_a_chunked_one(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    run, _ = programmed_run
    n = device_map.n_devices
    old_g, new_g = _g(n, 5), _g(n, 6)
    with engine.begin() as conn:  # as revision 0007 stored it: one blob in the row
        old_id = conn.execute(
            insert(readouts).values(run_id=run, offset_s=25.0, scheduled_s=2_000.0, board_time_s=2_000.0,
                                    **encode(old_g).columns("g")).returning(readouts.c.id)
        ).scalar_one()  # fmt: skip
    monkeypatch.setattr(store_readouts, "STORED_BLOCK_DEVICES", BLOCK)
    with engine.begin() as conn:
        add_readout(conn, run, offset_s=100.0, scheduled_s=2_075.0, board_time_s=2_075.0, g_us=new_g)
    with engine.connect() as conn:
        np.testing.assert_array_equal(load_readout(conn, old_id).g_us, old_g)
        np.testing.assert_array_equal(np.concatenate(list(iter_readout_ranges(conn, old_id, 7))), old_g)
        np.testing.assert_array_equal(readout_sample_us(conn, old_id, n), old_g)
        assert readout_sample_us(conn, old_id, n // 3).size <= n // 3 + 1
        for device in (0, 17, n - 1):
            assert device_series(conn, run, device).g_us.tolist() == [old_g[device], new_g[device]]
        assert conn.execute(select(func.count()).where(readout_blocks.c.readout_id == old_id)).scalar() == 0


def test_a_histogram_sample_of_a_large_readout_is_whole_blocks_spread_over_the_chip(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    run, _ = programmed_run
    g = _g(device_map.n_devices, 7)
    monkeypatch.setattr(store_readouts, "STORED_BLOCK_DEVICES", BLOCK)
    with engine.begin() as conn:
        readout_id = add_readout(conn, run, offset_s=25.0, scheduled_s=0.0, board_time_s=0.0, g_us=g)
    with engine.connect() as conn:
        sample = readout_sample_us(conn, readout_id, 2 * BLOCK)
        whole = readout_sample_us(conn, readout_id, device_map.n_devices)
    last = g.size - g.size % BLOCK
    np.testing.assert_array_equal(
        sample, np.concatenate([g[:BLOCK], g[last:]])
    )  # the first and the last block
    np.testing.assert_array_equal(whole, g)
