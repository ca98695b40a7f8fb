"""Engine settings that the readout workload depends on, checked on the real databases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, select

from hwctl.store.engine import BINARY_RESULTS, SQLITE_PAGE_BYTES, make_engine
from hwctl.store.migrate import upgrade
from hwctl.store.readouts import ProgrammingResult, add_readout, load_readout
from hwctl.store.schema import readouts

CHIP_DEVICES = 400_000  # a readout big enough to span many pages (1.6 MB)


def _add_chip_readout(engine: Engine, run: int) -> tuple[int, np.ndarray]:
    g_us = np.random.default_rng(3).uniform(0, 25, CHIP_DEVICES).astype(np.float32)
    with engine.begin() as conn:
        readout_id = add_readout(conn, run, offset_s=25.0, scheduled_s=1_025.0, board_time_s=1_025.0,
                                 g_us=g_us)  # fmt: skip
    return readout_id, g_us


def test_a_new_sqlite_file_uses_large_pages_so_blob_chains_are_short(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'new.sqlite'}")
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == SQLITE_PAGE_BYTES
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_a_readout_commit_is_checkpointed_into_the_sqlite_file_for_memory_mapped_reads(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult]
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("WAL checkpoints are SQLite's")
    _, g_us = _add_chip_readout(engine, programmed_run[0])
    # Left in the WAL, the blob's pages would reach the main file only at a later checkpoint.
    last_devices = g_us[-64:].tobytes()
    assert last_devices in Path(str(engine.url.database)).read_bytes()


def test_whole_vectors_come_back_from_postgresql_in_binary_not_hex_text(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult]
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("the result format is a PostgreSQL protocol choice")
    readout_id, g_us = _add_chip_readout(engine, programmed_run[0])
    columns = select(readouts.c.g_blob, readouts.c.read_at, readouts.c.offset_s)
    query = columns.where(readouts.c.id == readout_id)
    with engine.connect() as conn:
        binary = conn.execute(query, execution_options=BINARY_RESULTS)
        assert [binary.cursor.pgresult.fformat(i) for i in range(3)] == [1, 1, 1]
        row = binary.one()
        text = conn.execute(query)
        assert text.cursor.pgresult.fformat(0) == 0  # other statements keep the default
        assert text.one() == row
        readout = load_readout(conn, readout_id)
    assert row.read_at.tzinfo is not None and row.offset_s == 25.0
    np.testing.assert_array_equal(readout.g_us, g_us)
