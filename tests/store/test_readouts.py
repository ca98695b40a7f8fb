"""Per-device vectors: stored as checked blobs, sliced by device, exported in long format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, select, update

from hwctl.mapping import DeviceMap
from hwctl.store.errors import CorruptVectorError, StoreError
from hwctl.store.export import export_readout
from hwctl.store.readouts import (
    ProgrammingResult,
    add_readout,
    device_series,
    load_programming_result,
    load_readout,
)
from hwctl.store.schema import readout_blocks, readouts

OFFSETS_S = (25.0, 100.0, 1_000.0, 10_000.0)


def _read_back(engine: Engine, run: int, n_devices: int) -> dict[float, np.ndarray]:
    """Store one readout per offset with distinct conductances; return what was written."""
    rng = np.random.default_rng(3)
    written = {}
    with engine.begin() as conn:
        for offset in OFFSETS_S:
            g = rng.uniform(0, 25, n_devices).astype(np.float32)
            add_readout(conn, run, offset_s=offset, scheduled_s=1_000 + offset, board_time_s=1_001 + offset,
                        g_us=g, temperature_c=25.0)  # fmt: skip
            written[offset] = g
    return written


def test_programming_result_round_trips_every_vector_bit_exactly(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult]
) -> None:
    run, result = programmed_run
    with engine.connect() as conn:
        loaded = load_programming_result(conn, run)
    for name in ("g_final_us", "iterations", "status", "programmed_s"):
        expected, actual = getattr(result, name), getattr(loaded, name)
        assert actual.dtype == expected.dtype
        np.testing.assert_array_equal(actual, expected)


def test_readout_round_trips_with_its_metadata(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap
) -> None:
    run, _ = programmed_run
    written = _read_back(engine, run, device_map.n_devices)
    with engine.connect() as conn:
        first = load_readout(conn, 1)
    np.testing.assert_array_equal(first.g_us, written[first.offset_s])
    assert first.board_time_s == 1_001 + first.offset_s and first.temperature_c == 25.0


def test_a_corrupted_readout_blob_is_detected_not_returned(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap
) -> None:
    run, _ = programmed_run
    _read_back(engine, run, device_map.n_devices)
    with engine.begin() as conn:
        blob = bytearray(load_readout(conn, 2).g_us.tobytes())
        blob[5] ^= 0x01
        # the test chip's readout is one stored block
        stored = update(readout_blocks).where(readout_blocks.c.readout_id == 2)
        conn.execute(stored.values(g_blob=bytes(blob)))
    with engine.connect() as conn, pytest.raises(CorruptVectorError, match="readout 2: checksum mismatch"):
        load_readout(conn, 2)


def test_a_truncated_readout_blob_is_detected_by_its_length(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap
) -> None:
    run, _ = programmed_run
    _read_back(engine, run, device_map.n_devices)
    with engine.begin() as conn:
        stored = update(readout_blocks).where(readout_blocks.c.readout_id == 1)
        conn.execute(stored.values(g_blob=b"\x00" * 8))
    with engine.connect() as conn, pytest.raises(CorruptVectorError, match="holds 8 bytes"):
        load_readout(conn, 1)


def test_one_device_series_is_its_conductance_at_each_readout_against_its_own_age(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap
) -> None:
    run, result = programmed_run
    written = _read_back(engine, run, device_map.n_devices)
    for device in (0, 17, device_map.n_devices - 1):
        with engine.connect() as conn:
            series = device_series(conn, run, device)
        expected_t = [1_001 + offset - result.programmed_s[device] for offset in OFFSETS_S]
        np.testing.assert_allclose(series.t_s, expected_t)
        np.testing.assert_array_equal(series.g_us, [written[offset][device] for offset in OFFSETS_S])


def test_a_device_in_a_later_block_is_aged_from_that_block_s_read_time(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap
) -> None:
    run, result = programmed_run
    _read_back(engine, run, device_map.n_devices)
    second_block = device_map.n_devices // 2
    with engine.begin() as conn:  # as the campaign records a readout read in two blocks
        rows = conn.execute(select(readouts.c.id, readouts.c.board_time_s).where(readouts.c.run_id == run))
        for row in rows.all():
            starts = [[0, row.board_time_s], [second_block, row.board_time_s + 7_200.0]]
            conn.execute(update(readouts).where(readouts.c.id == row.id).values(block_starts=starts))
    with engine.connect() as conn:
        first, later = device_series(conn, run, 0), device_series(conn, run, second_block)
    np.testing.assert_allclose(first.t_s, [1_001 + o - result.programmed_s[0] for o in OFFSETS_S])
    later_programmed_s = result.programmed_s[second_block]
    np.testing.assert_allclose(later.t_s, [1_001 + o + 7_200.0 - later_programmed_s for o in OFFSETS_S])


def test_device_outside_the_run_is_a_clear_error(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap
) -> None:
    run, _ = programmed_run
    _read_back(engine, run, device_map.n_devices)
    with engine.connect() as conn, pytest.raises(StoreError, match=f"outside run {run}'s"):
        device_series(conn, run, device_map.n_devices)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_readout_exports_one_row_per_device_in_long_format(
    engine: Engine,
    programmed_run: tuple[int, ProgrammingResult],
    device_map: DeviceMap,
    tmp_path: Path,
    suffix: str,
) -> None:
    run, result = programmed_run
    written = _read_back(engine, run, device_map.n_devices)
    with engine.connect() as conn:
        path = export_readout(conn, 3, device_map, tmp_path / f"readout{suffix}")
    table = pa_csv.read_csv(path) if suffix == ".csv" else pq.read_table(path)
    assert table.column_names == ["device", "layer", "weight_index", "sign", "t_s", "g_us"]
    assert table.num_rows == device_map.n_devices
    rows = table.to_pylist()
    for device in (0, device_map.n_devices // 2, device_map.n_devices - 1):
        info = device_map.device_info(device)
        row = rows[device]
        assert (row["device"], row["layer"], row["weight_index"], row["sign"]) == (
            device, info.layer, info.weight_index, info.sign,
        )  # fmt: skip
        assert row["t_s"] == pytest.approx(1_001 + OFFSETS_S[2] - result.programmed_s[device])
        assert row["g_us"] == pytest.approx(float(written[OFFSETS_S[2]][device]), rel=1e-6)


def test_export_to_an_unknown_format_is_refused(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap, tmp_path: Path
) -> None:
    run, _ = programmed_run
    _read_back(engine, run, device_map.n_devices)
    with engine.connect() as conn, pytest.raises(StoreError, match=r"use one of \.csv, \.parquet"):
        export_readout(conn, 1, device_map, tmp_path / "readout.xlsx")
