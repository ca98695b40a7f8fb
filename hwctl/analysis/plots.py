"""Figures for a chip's readouts: accuracy over time, conductances, programming, drift.

Each `*_figure` builder returns a matplotlib `Figure` (for notebooks and tests that
inspect it); `render` turns any of them into PNG or SVG bytes for the API and reports.
Figures are built without pyplot, so no global state and no display are involved.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from drivers.base import Geometry
from drivers.pcm_model import PCMModel
from hwctl.analysis.statistics import ChipStatistics

ImageFormat = Literal["png", "svg"]
HISTOGRAM_READOUTS = 6  # more overlaid histograms are unreadable


@dataclass(frozen=True)
class AccuracyCurve:
    """One compensation method's accuracy at times after programming."""

    method: str  # e.g. "none", "GDC", "AdaBS"
    t_s: Sequence[float]
    accuracy_pct: Sequence[float]
    forecast_t_s: Sequence[float] = field(default_factory=list)
    forecast_accuracy_pct: Sequence[float] = field(default_factory=list)
    # ± one standard deviation over read draws (0: one read); drawn as error bars.
    draw_std_pct: Sequence[float] = field(default_factory=list)
    forecast_draw_std_pct: Sequence[float] = field(default_factory=list)


def render(figure: Figure, fmt: ImageFormat = "png") -> bytes:
    """The figure as PNG or SVG bytes."""
    if fmt not in ("png", "svg"):
        raise ValueError(f"image format must be 'png' or 'svg', got {fmt!r}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def accuracy_vs_time_figure(curves: Sequence[AccuracyCurve]) -> Figure:
    """Measured accuracy (solid, markers) and forecasts (dashed) per method on log time,
    with error bars of ± one standard deviation over read draws where there are several."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for i, curve in enumerate(curves):
        color = f"C{i}"
        ax.plot(curve.t_s, curve.accuracy_pct, "o-", color=color, label=f"{curve.method} (measured)")
        for t_s, accuracy_pct, std_pct in (
            (curve.t_s, curve.accuracy_pct, curve.draw_std_pct),
            (curve.forecast_t_s, curve.forecast_accuracy_pct, curve.forecast_draw_std_pct),
        ):
            if any(std_pct):
                ax.errorbar(t_s, accuracy_pct, yerr=std_pct, fmt="none", ecolor=color, capsize=3)
        if len(curve.forecast_t_s):
            ax.plot(
                curve.forecast_t_s,
                curve.forecast_accuracy_pct,
                "s--",
                color=color,
                markerfacecolor="none",
                label=f"{curve.method} (forecast)",
            )
    ax.set_xscale("log")
    ax.set_xlabel("time since programming (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Inference accuracy vs time, per drift compensation method")
    ax.grid(True, which="both", alpha=0.3)
    if curves:
        ax.legend()
    return fig


def histogram_picks(n_readouts: int) -> list[int]:
    """Which readouts the histograms overlay: up to `HISTOGRAM_READOUTS`, evenly spread, first and last."""
    spread = np.linspace(0, n_readouts - 1, min(n_readouts, HISTOGRAM_READOUTS))
    return [int(i) for i in np.unique(np.round(spread))]


def conductance_histograms_figure(readouts: Sequence[tuple[str, npt.ArrayLike]], bins: int = 100) -> Figure:
    """Overlaid conductance distributions, one per (label, g_us) readout."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    edges = np.linspace(0.0, max(float(np.max(g)) for _, g in readouts), bins + 1)
    for label, g_us in readouts:
        ax.hist(np.asarray(g_us).ravel(), bins=edges.tolist(), histtype="step", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("conductance (µS)")
    ax.set_ylabel("devices per bin")
    ax.set_title("Conductance distribution per readout")
    ax.legend(title="readout")
    return fig


def programming_error_figure(stats: ChipStatistics, model: PCMModel | None = None) -> Figure:
    """Measured programming σ and bias per target bin beside the model's σ_prog curve."""
    model = model or PCMModel()
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    target = np.array([b.target_mean_us for b in stats.bins])
    ax.plot(target, [b.prog_sigma_us for b in stats.bins], "o", label="measured σ of G(t0) − G_T")
    ax.plot(target, [b.prog_bias_us for b in stats.bins], "^", label="measured bias (mean error)")
    g_us = np.linspace(0.0, stats.g_max_us, 200)
    ax.plot(g_us, model.sigma_prog_us(g_us), "-", color="k", label="model σ_prog")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("target conductance G_T (µS)")
    ax.set_ylabel("programming error (µS)")
    ax.set_title(f"Programming error at t0 = {stats.t0_s:g} s after program-and-verify")
    ax.legend()
    return fig


def drift_vs_target_figure(stats: ChipStatistics, model: PCMModel | None = None) -> Figure:
    """Binned μ_ν ± σ_ν of the fitted drift exponents beside the model's law."""
    model = model or PCMModel()
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    target = [b.target_mean_us for b in stats.bins]
    ax.errorbar(
        target,
        [b.nu_mean for b in stats.bins],
        yerr=[b.nu_sigma for b in stats.bins],
        fmt="o",
        capsize=3,
        label="measured μ_ν ± σ_ν",
    )
    g_us = np.linspace(stats.g_max_us / 200, stats.g_max_us, 200)
    mu, sigma = model.drift_mu(g_us), model.drift_sigma(g_us)
    ax.plot(g_us, mu, "-", color="k", label="model μ_ν")
    ax.fill_between(g_us, mu - sigma, mu + sigma, color="k", alpha=0.15, label="model μ_ν ± σ_ν")
    ax.set_xlabel("target conductance G_T (µS)")
    ax.set_ylabel("drift exponent ν")
    ax.set_title("Drift exponent vs target conductance")
    ax.legend()
    return fig


def chip_heatmap_figure(
    values: npt.ArrayLike,
    addresses: npt.ArrayLike,
    geometry: Geometry,
    quantity: str = "drift exponent ν",
) -> Figure:
    """One image per tile (rows × cols) of a per-device quantity; unmeasured devices blank."""
    image = np.full(geometry.n_devices, np.nan)
    image[np.asarray(addresses, np.int64)] = np.asarray(values, np.float64)
    tiles = image.reshape(geometry.tiles, geometry.rows, geometry.cols)
    finite = tiles[np.isfinite(tiles)]
    vmin, vmax = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    return tile_heatmap_figure(tiles, geometry, (float(vmin), float(vmax)), quantity)


def tile_heatmap_figure(
    tiles: npt.NDArray[np.floating],
    geometry: Geometry,
    limits: tuple[float, float],
    quantity: str = "drift exponent ν",
) -> Figure:
    """One image per tile, `tiles` (n_tiles, h, w), each stretched over its tile's word and bit
    lines (h × w may be coarser than rows × cols: a pixel is then the mean of a square of
    devices); NaN blank; colours from `limits` (vmin, vmax)."""
    n_cols = math.ceil(math.sqrt(geometry.tiles))
    n_rows = math.ceil(geometry.tiles / n_cols)
    fig = Figure(figsize=(3.2 * n_cols + 1, 3.2 * n_rows * geometry.rows / geometry.cols + 0.8))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    extent = (-0.5, geometry.cols - 0.5, geometry.rows - 0.5, -0.5)
    mappable = None
    for k, ax in enumerate(axes.ravel()):
        if k >= geometry.tiles:
            ax.set_visible(False)
            continue
        mappable = ax.imshow(
            tiles[k], vmin=limits[0], vmax=limits[1], cmap="viridis", interpolation="nearest", extent=extent
        )
        ax.set_title(f"tile {k}", fontsize=9)
        ax.set_xlabel("column (bit line)", fontsize=8)
        ax.set_ylabel("row (word line)", fontsize=8)
    assert mappable is not None
    fig.colorbar(mappable, ax=axes.ravel().tolist(), label=quantity)
    fig.suptitle(f"Chip map of {quantity}")
    return fig
