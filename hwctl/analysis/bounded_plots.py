"""An experiment's plots drawn from only what each one shows, in bounded memory (the API's).

The report's analysis (`hwctl.report.analyze_experiment`) loads the run whole — device
map, programming result, the stored fit's vectors — 2–3 GB at 43.6 M devices, for any
plot. Here each plot reads its own data:

- histograms: the readouts' rows and a sample of each overlaid readout (whole stored
  blocks, `readout_sample_us`); the end of programming is a readout's scheduled time −
  its offset (readbacks are scheduled from it), so the programming result is not read;
- programming error, drift: the stored fit's statistics (JSON), no vector;
- heatmap: ν read layer by layer from the stored fit (`open_blob`, `LAYER_RANGE_DEVICES`
  at a time) and placed on the chip from the map's placement (its JSON part, not the
  targets), averaged into tile images of at most `HEATMAP_TILE_PIXELS` pixels; colour
  limits from a strided sample of ≤ `PERCENTILE_SAMPLE_DEVICES` values.

Memory is a range of ν, the tile images and a sample, whatever the chip's size.
`bounded_figure` gives None where only the whole analysis can draw the plot (no stored fit
covering every readout: the provisional fit is computed there; the accuracy plot).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure
from sqlalchemy import Connection

from drivers.base import Geometry
from hwctl.analysis.forecast import horizon_label
from hwctl.analysis.plots import (
    conductance_histograms_figure,
    drift_vs_target_figure,
    histogram_picks,
    programming_error_figure,
    tile_heatmap_figure,
)
from hwctl.analysis.statistics import ChipStatistics
from hwctl.analysis.stored import HISTOGRAM_SAMPLE_DEVICES
from hwctl.mapping import LayerPlacement
from hwctl.store.blob_ranges import open_blob
from hwctl.store.readouts import list_readouts, readout_sample_us
from hwctl.store.run_parts import FitHeader, RunRef, latest_fit_header, latest_run, map_placement, n_readouts
from hwctl.store.scans import scanning
from hwctl.store.schema import device_fits

# A tile image has at most this many pixels; larger tiles are averaged over squares of devices.
HEATMAP_TILE_PIXELS = 1 << 16
# The colour limits (1st and 99th percentile) come from at most this many devices, evenly strided.
PERCENTILE_SAMPLE_DEVICES = 1 << 20
# Devices of ν read from the stored fit at once.
LAYER_RANGE_DEVICES = 1 << 20
_F32 = np.dtype("<f4")


def bounded_figure(conn: Connection, experiment_id: int, name: str) -> Figure | None:
    """Plot `name` of the experiment in bounded memory, or None where the whole analysis must draw it."""
    run = latest_run(conn, experiment_id)
    if run is None:
        return None
    if name == "histograms":
        return _histograms(conn, run)
    if name not in ("programming_error", "drift", "heatmap"):
        return None
    header = _current_fit(conn, run)
    if header is None or header.statistics is None:
        return None
    if name == "heatmap":
        return _heatmap(conn, run, header)
    stats = ChipStatistics.from_dict(header.statistics)
    return programming_error_figure(stats) if name == "programming_error" else drift_vs_target_figure(stats)


def _current_fit(conn: Connection, run: RunRef) -> FitHeader | None:
    """The stored fit when it is the one the report would show (`run_fit.stored_run_fit`'s rule:
    statistics, status and t0 stored, fitted from every readout stored now)."""
    header = latest_fit_header(conn, run.run_id)
    if header is None or not header.has_status or header.t0_s is None or header.statistics is None:
        return None
    return header if header.summary.get("n_readouts") == n_readouts(conn, run.run_id) else None


def _histograms(conn: Connection, run: RunRef) -> Figure | None:
    stored = list_readouts(conn, run.run_id)
    if not stored:
        return None
    end_s = stored[0].scheduled_s - stored[0].offset_s
    return conductance_histograms_figure([
        (horizon_label(stored[i].board_time_s - end_s), readout_sample_us(conn, stored[i].id,
                                                                          HISTOGRAM_SAMPLE_DEVICES))
        for i in histogram_picks(len(stored))
    ])  # fmt: skip


def heatmap_factor(geometry: Geometry, max_pixels: int = HEATMAP_TILE_PIXELS) -> int:
    """The side, in devices, of the square one heatmap pixel averages: 1 for tiles of at most
    `max_pixels` devices."""
    factor = 1
    while math.ceil(geometry.rows / factor) * math.ceil(geometry.cols / factor) > max_pixels:
        factor += 1
    return factor


class TileImages:
    """Per-tile sums and counts of a per-device quantity on a grid `factor` devices square."""

    def __init__(self, geometry: Geometry, factor: int) -> None:
        self.factor = factor
        self.shape = (geometry.tiles, math.ceil(geometry.rows / factor), math.ceil(geometry.cols / factor))
        self.sums = np.zeros(self.shape, np.float64)
        self.counts = np.zeros(self.shape, np.int64)

    def add(self, tile: int, word_lines: npt.NDArray[np.int64], bit_lines: npt.NDArray[np.int64],
            values: npt.NDArray[np.floating]) -> None:  # fmt: skip
        """Values (len(word_lines), len(bit_lines)) of the devices at those lines of `tile`; NaN skipped."""
        pixel = (word_lines // self.factor)[:, None] * self.shape[2] + (bit_lines // self.factor)[None, :]
        finite = np.isfinite(values)
        size = self.shape[1] * self.shape[2]
        self.sums[tile].reshape(-1)[:] += np.bincount(pixel[finite], values[finite], size)
        self.counts[tile].reshape(-1)[:] += np.bincount(pixel[finite], minlength=size)

    def image(self) -> npt.NDArray[np.float64]:
        """The mean per pixel, NaN where no device was measured."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.sums / self.counts, np.nan)


def _heatmap(conn: Connection, run: RunRef, header: FitHeader) -> Figure:
    geometry, layers = map_placement(conn, run.mapping_id)
    images = TileImages(geometry, heatmap_factor(geometry, HEATMAP_TILE_PIXELS))
    n_devices = sum(2 * layer.n_weights for layer in layers)
    stride = max(1, math.ceil(n_devices / PERCENTILE_SAMPLE_DEVICES))
    sample: list[npt.NDArray[np.float32]] = []
    with (
        scanning(conn),
        open_blob(
            conn, device_fits, "nu_blob", header.fit_id, buffer_bytes=4 * LAYER_RANGE_DEVICES
        ) as nu_blob,
    ):
        for layer, first_row, values, bit_offset in _layer_rows(nu_blob, layers):
            _place(images, geometry, layer, first_row, values, bit_offset)
            kept = values.ravel()[::stride]
            sample.append(kept[np.isfinite(kept)])
    finite = np.concatenate(sample) if sample else np.empty(0, np.float32)
    vmin, vmax = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    return tile_heatmap_figure(images.image(), geometry, (float(vmin), float(vmax)))


def _layer_rows(
    blob: BinaryIO, layers: tuple[LayerPlacement, ...]
) -> Iterator[tuple[LayerPlacement, int, npt.NDArray[np.float32], int]]:
    """(layer, first matrix row, ν of those rows' devices of one sign, bit line offset: 0 for
    G+, 1 for G−), ≤ `LAYER_RANGE_DEVICES` devices at a time, in stored order: the blob is
    read front to back (on PostgreSQL every read decompresses the value up to its end)."""
    for layer in layers:
        rows, cols = layer.shape
        step = max(1, LAYER_RANGE_DEVICES // cols)
        for sign in (0, 1):
            for first in range(0, rows, step):
                count = min(step, rows - first) * cols
                first_device = layer.offset + sign * layer.n_weights + first * cols
                yield layer, first, _read_f32(blob, first_device, count).reshape(-1, cols), sign


def _read_f32(blob: BinaryIO, first_device: int, count: int) -> npt.NDArray[np.float32]:
    blob.seek(first_device * _F32.itemsize)
    data = blob.read(count * _F32.itemsize)
    if len(data) != count * _F32.itemsize:
        raise ValueError(f"the stored fit ends before device {first_device + count}")
    return np.frombuffer(data, _F32)


def _place(
    images: TileImages, geometry: Geometry, layer: LayerPlacement, first_row: int,
    values: npt.NDArray[np.float32], bit_offset: int,
) -> None:  # fmt: skip
    """Matrix rows `first_row`… of one sign's devices onto their tiles (`hwctl.mapping`: weight
    (r, c) of a block at (tile, row, col) is on word line row + r − r0, bit line col + 2(c − c0),
    its G− device on the next bit line)."""
    stop_row = first_row + values.shape[0]
    for b in layer.blocks:
        lo, hi = max(b.row0, first_row), min(b.row0 + b.n_rows, stop_row)
        if lo >= hi:
            continue
        word_lines = b.row + np.arange(lo - b.row0, hi - b.row0)
        bit_lines = b.col + 2 * np.arange(b.n_cols) + bit_offset
        images.add(
            b.tile, word_lines, bit_lines, values[lo - first_row : hi - first_row, b.col0 : b.col0 + b.n_cols]
        )
