"""The 43.6 M-device campaign of `benchmarks.scale`, scaled down so that it runs in CI:
ResNet-34's ImageNet layout at 13/64 of its width (`resnet34-w13`, 1,966,042 devices,
uploaded as a `.pt2` from `hwctl export`) on a 4.2 M-device chip, through the same
`hwctl sim-chip`, `hwctl serve --no-embedded` and `hwctl worker` processes, pyvisa over
TCP, SQLite. What must hold at any size holds
here: every readout stored in blocks of the worker's block size (never one blob), the
drift fit stored over all of them, the download streamed and ranged, and each process's
peak RSS (VmHWM) well below what holding the readouts would take."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from benchmarks.scale import database, run_campaign
from hwctl.store.engine import make_engine
from hwctl.store.fits import latest_device_fit
from hwctl.store.readouts import iter_readout_blocks
from hwctl.store.schema import readout_blocks, readouts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BLOCK_DEVICES = 131_072  # 15 blocks per readout
OFFSETS_S = [25.0, 60.0, 200.0, 600.0, 2_000.0, 7_200.0]
N_DEVICES = 1_966_042  # resnet34-w13


def test_a_2m_device_campaign_over_tcp_stores_streams_and_fits_every_readout(tmp_path: Path) -> None:
    with database("sqlite", tmp_path, postgres_url="") as url:
        result = run_campaign(
            url, tmp_path, arch="resnet34-w13", geometry="8,512,1024", block_devices=BLOCK_DEVICES,
            offsets_s=OFFSETS_S, timeout_s=180.0, log=lambda _: None,
        )  # fmt: skip
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(select(readouts.c.id, readouts.c.g_len, readouts.c.g_blob)).all()
                blocks = dict(
                    conn.execute(
                        select(readout_blocks.c.readout_id, func.count()).group_by(
                            readout_blocks.c.readout_id
                        )
                    ).all()
                )
                leftover = conn.execute(
                    select(func.count()).where(readout_blocks.c.job_id.is_not(None))
                ).scalar()
                fit = latest_device_fit(conn, 1)
                first = next(iter_readout_blocks(conn, rows[0].id))
        finally:
            engine.dispose()

    assert result["jobs"]["statuses"] == ["succeeded"]
    assert result["readouts_stored"] == len(rows) == len(OFFSETS_S)
    # Every readout in blocks of the worker's size, taken over from its readback (none left behind).
    assert all(r.g_len == N_DEVICES and r.g_blob is None for r in rows)
    assert set(blocks.values()) == {math.ceil(N_DEVICES / BLOCK_DEVICES)}
    assert leftover == 0
    assert first[0] == 0 and first[1].size == BLOCK_DEVICES
    # The fit covers every device and every readout.
    assert fit.n_devices == N_DEVICES and fit.summary["n_readouts"] == len(OFFSETS_S)
    assert fit.status is not None and np.mean(fit.status == 0) > 0.95  # RESET targets read 0: no signal
    # The download is the whole .npy, a Range of it a 206.
    assert result["download_bytes"] == 128 + 4 * N_DEVICES
    assert result["range_status"] == 206
    # Memory: the worker and the API hold their imports (~0.35 / ~0.42 GB) and bounded work
    # (0.57 / 0.55 GB measured: the fit's ranges, the upload's validation); between jobs the
    # worker holds no copy of what it stored (tests/scale/test_bounded_memory.py at 4 M).
    assert result["rss_gb"]["worker"] < 1.0
    assert result["rss_gb"]["api"] < 0.8
    between = result["worker_memory_mb_by_job"]
    assert between["readback"]["VmRSS_at_start"] - between["program"]["VmRSS_at_start"] < 150
