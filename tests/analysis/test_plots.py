"""Figures render to valid PNG/SVG and carry the series a reader expects."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.base import Geometry
from hwctl.analysis.plots import (
    AccuracyCurve,
    accuracy_vs_time_figure,
    chip_heatmap_figure,
    conductance_histograms_figure,
    drift_vs_target_figure,
    programming_error_figure,
    render,
)
from hwctl.analysis.statistics import chip_statistics
from tests.analysis.conftest import FittedChip

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_accuracy_plot_draws_measured_and_dashed_forecast_lines() -> None:
    curves = [
        AccuracyCurve("GDC", [25, 3600, 86_400], [93.7, 93.1, 92.6], [1e6, 3e7], [91.8, 90.9]),
        AccuracyCurve("AdaBS", [25, 3600, 86_400], [93.7, 93.6, 93.5]),
    ]
    fig = accuracy_vs_time_figure(curves)
    (ax,) = fig.axes
    assert [line.get_linestyle() for line in ax.get_lines()] == ["-", "--", "-"]
    assert "GDC (forecast)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_xscale() == "log"
    assert render(fig, "png").startswith(PNG_MAGIC)
    svg = render(fig, "svg")
    assert b"<svg" in svg[:1000]


def test_binned_figures_show_measured_points_beside_the_model(default_chip: FittedChip) -> None:
    stats = chip_statistics(default_chip.fit, default_chip.target_g_us, default_chip.readouts.t_s)
    (ax,) = programming_error_figure(stats).axes
    assert len(ax.get_lines()) == 4  # σ, bias, model curve, zero line
    (ax,) = drift_vs_target_figure(stats).axes
    assert len(ax.get_lines()) >= 2 and ax.get_ylabel() == "drift exponent ν"


def test_histograms_overlay_one_step_curve_per_readout(default_chip: FittedChip) -> None:
    g_us = default_chip.readouts.g_us
    fig = conductance_histograms_figure([("25 s", g_us[0]), ("1 h", g_us[10]), ("1 day", g_us[-1])])
    (ax,) = fig.axes
    assert len(ax.patches) == 3
    assert render(fig, "png").startswith(PNG_MAGIC)


def test_heatmap_has_one_image_per_tile_plus_a_colorbar() -> None:
    geometry = Geometry(tiles=3, rows=8, cols=16)
    addresses = np.arange(0, geometry.n_devices, 2)
    fig = chip_heatmap_figure(np.linspace(0.03, 0.08, addresses.size), addresses, geometry)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 4  # three tiles, one colorbar
    assert np.ma.getmaskarray(visible[0].get_images()[0].get_array())[0, 1]  # unmeasured: blank
    assert render(fig, "svg").lstrip().startswith(b"<?xml")


def test_unknown_image_format_is_refused() -> None:
    with pytest.raises(ValueError, match="png' or 'svg"):
        render(accuracy_vs_time_figure([]), "jpg")  # type: ignore[arg-type]
