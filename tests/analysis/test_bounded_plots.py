"""The API's plots read only what they draw, and draw what the whole analysis draws."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from sqlalchemy import Engine, delete

from drivers.base import Geometry
from hwctl.analysis import bounded_plots
from hwctl.analysis.bounded_plots import bounded_figure, heatmap_factor
from hwctl.analysis.plots import render
from hwctl.analysis.stored import load_experiment
from hwctl.report import analyze_experiment, plot_bytes
from hwctl.store.engine import make_engine
from hwctl.store.migrate import upgrade
from hwctl.store.schema import device_fits
from tests.api.results_data import Campaign, write_campaign


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'plots.sqlite'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def campaign(engine: Engine) -> Campaign:
    return write_campaign(engine)


def _both(engine: Engine, campaign: Campaign, name: str) -> tuple[Figure, Figure]:
    with engine.connect() as conn:
        bounded = bounded_figure(conn, campaign.experiment_id, name)
        whole = analyze_experiment(conn, campaign.experiment_id, forecast=False).figure(name)
    assert bounded is not None
    return bounded, whole


def _images(figure: Figure) -> list[np.ma.MaskedArray]:
    return [image.get_array() for ax in figure.axes for image in ax.get_images()]


def test_the_heatmap_read_layer_by_layer_is_the_whole_analysis_heatmap(
    engine: Engine, campaign: Campaign
) -> None:
    bounded, whole = _both(engine, campaign, "heatmap")
    for got, want in zip(_images(bounded), _images(whole), strict=True):
        np.testing.assert_array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(want))
        np.testing.assert_allclose(got.filled(0), want.filled(0), rtol=1e-6)  # ν stored as float32
    (got_image,), (want_image,) = bounded.axes[0].get_images(), whole.axes[0].get_images()
    np.testing.assert_allclose(got_image.get_clim(), want_image.get_clim(), rtol=1e-6)


def test_tiles_larger_than_the_pixel_budget_are_averaged_over_squares(
    engine: Engine, campaign: Campaign, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, whole = _both(engine, campaign, "heatmap")
    monkeypatch.setattr(bounded_plots, "HEATMAP_TILE_PIXELS", 16)  # 16×16 tiles → 4×4 pixels of 4×4 devices
    monkeypatch.setattr(bounded_plots, "LAYER_RANGE_DEVICES", 10)  # several reads per layer
    bounded, _ = _both(engine, campaign, "heatmap")
    (full,), (coarse,) = _images(whole)[:1], _images(bounded)[:1]
    squares = full.filled(np.nan).reshape(4, 4, 4, 4)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning, match="Mean of empty slice"):
        expected = np.nanmean(squares, axis=(1, 3))
    np.testing.assert_allclose(coarse.filled(np.nan), expected, rtol=1e-6)


def test_a_pixel_averages_the_smallest_square_that_keeps_a_tile_within_budget() -> None:
    assert heatmap_factor(Geometry(1, 256, 256)) == 1
    assert heatmap_factor(Geometry(48, 512, 2048)) == 4  # 128 × 512 pixels a tile


@pytest.mark.parametrize("name", ["programming_error", "drift"])
def test_binned_plots_come_from_the_stored_statistics(engine: Engine, campaign: Campaign, name: str) -> None:
    bounded, whole = _both(engine, campaign, name)
    for got, want in zip(bounded.axes[0].get_lines(), whole.axes[0].get_lines(), strict=True):
        np.testing.assert_array_equal(got.get_xydata(), want.get_xydata())


def test_histograms_overlay_the_same_readout_samples(engine: Engine, campaign: Campaign) -> None:
    bounded, whole = _both(engine, campaign, "histograms")
    got, want = bounded.axes[0].patches, whole.axes[0].patches
    assert len(got) == len(want) == 3
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.get_path().vertices, b.get_path().vertices)


def test_without_a_stored_fit_of_every_readout_the_whole_analysis_draws(
    engine: Engine, campaign: Campaign
) -> None:
    with engine.begin() as conn:
        conn.execute(delete(device_fits))
    with engine.connect() as conn:
        assert bounded_figure(conn, campaign.experiment_id, "heatmap") is None
        assert bounded_figure(conn, campaign.experiment_id, "drift") is None
        assert bounded_figure(conn, campaign.experiment_id, "accuracy") is None
        assert bounded_figure(conn, campaign.experiment_id + 1, "histograms") is None


def test_the_accuracy_plot_is_drawn_without_the_runs_vectors(engine: Engine, campaign: Campaign) -> None:
    with engine.connect() as conn:
        light = load_experiment(conn, campaign.experiment_id, vectors=False)
        whole = analyze_experiment(conn, campaign.experiment_id, forecast=False)
        served = plot_bytes(conn, campaign.experiment_id, "accuracy")
    assert light.device_map is None and light.programming is None and light.g_samples_us == []
    assert light.measured == whole.stored.measured and len(light.readouts) == 3
    assert served == render(whole.figure("accuracy"))
