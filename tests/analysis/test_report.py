"""The experiment report, built from a real digits campaign run by the station worker in virtual time."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, delete, func, select, update

from hwctl.analysis.stored import NotReadyError, load_experiment
from hwctl.cli import main
from hwctl.embedded_chip import SimChipOptions, start_embedded_chip
from hwctl.report import (
    PLOT_NAMES,
    UnknownPlotError,
    analyze_experiment,
    build_report,
    plot_bytes,
    training_noise_eta,
)
from hwctl.store.engine import make_engine
from hwctl.store.errors import NotFoundError
from hwctl.store.fits import StoredDeviceFit, latest_device_fit
from hwctl.store.migrate import upgrade
from hwctl.store.schema import device_fits, evaluations, readouts
from hwctl.worker import Worker
from tests.service.conftest import SMALL_CHIP, create_campaign
from tests.service.test_campaign import run_until_idle

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
READOUTS = 4


@dataclass(frozen=True)
class Reported:
    url: str
    engine: Engine
    experiment_id: int
    index: Path


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reported]:
    """A 24 h campaign (4 readouts, every method evaluated) on SQLite, and its report."""
    tmp = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{tmp / 'hwctl.sqlite'}"
    engine = make_engine(url)
    upgrade(engine)
    chip = start_embedded_chip(SimChipOptions(virtual=True, geometry=SMALL_CHIP, seed=3))
    try:
        campaign = create_campaign(engine, chip.resource, points=READOUTS, evaluate=True)
        run_until_idle(Worker(engine, campaign.station), engine, timeout_s=120.0)
    finally:
        chip.stop()
    index = build_report(engine, campaign.experiment_id, tmp / "out")
    yield Reported(url, engine, campaign.experiment_id, index)
    engine.dispose()


def test_report_has_every_plot_as_png_and_svg_beside_its_pages(reported: Reported) -> None:
    out = reported.index.parent
    assert reported.index.name == "index.html"
    for name in PLOT_NAMES:
        assert (out / f"{name}.png").read_bytes().startswith(PNG_MAGIC), name
        assert b"<svg" in (out / f"{name}.svg").read_bytes()[:2000], name
    html = reported.index.read_text()
    markdown = (out / "report.md").read_text()
    assert set(re.findall(r'<img src="([^"]+)"', html)) == {f"{n}.png" for n in PLOT_NAMES}
    assert set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)) == {f"{n}.png" for n in PLOT_NAMES}
    assert "http://" not in html and "https://" not in html and "<script" not in html  # self-contained


def test_accuracy_table_has_each_method_measured_at_every_readout_and_forecast_to_a_year(
    reported: Reported,
) -> None:
    html = reported.index.read_text()
    header = re.search(r"<th>time since programming</th>.*?</tr>", html)
    assert header is not None
    methods = re.findall(r"<th>([^<]*)</th>", header.group(0))[2:]
    assert methods == ["none (%)", "GDC (%)", "AdaBS (%)"]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>(measured|forecast)</td>((?:<td>[^<]*</td>){3})</tr>", html)
    assert [kind for _, kind, _ in rows] == ["measured"] * READOUTS + ["forecast"] * 3
    assert [label for label, kind, _ in rows if kind == "forecast"] == ["1 week", "1 month", "1 year"]
    for _, _, cells in rows:
        assert len(re.findall(r"<td>\d+\.\d \[\d+\.\d–\d+\.\d\]</td>", cells)) == 3  # accuracy [95 % CI]


def test_report_json_holds_the_stored_evaluations_and_labels_forecasts(reported: Reported) -> None:
    data = json.loads((reported.index.parent / "report.json").read_text())
    with reported.engine.connect() as conn:
        stored = conn.execute(select(evaluations.c.method, evaluations.c.accuracy)).all()
    measured = [r for r in data["accuracy"] if r["kind"] == "measured"]
    assert sorted((r["method"], r["accuracy"]) for r in measured) == sorted((m, a) for m, a in stored)
    forecast = [r for r in data["accuracy"] if r["kind"] == "forecast"]
    assert {(r["label"], r["method"]) for r in forecast} == {
        (label, method) for label in ("1 week", "1 month", "1 year") for method in ("none", "gdc", "adabs")
    }
    assert min(r["t_s"] for r in forecast) > max(r["t_s"] for r in measured)
    programming = data["programming"]
    assert programming["devices"] == 2 * programming["analog_weights"] > 0
    assert sum(programming["status_counts"].values()) == programming["devices"]
    assert data["statistics"]["n_devices"] == programming["devices"]


def test_one_read_per_point_is_a_spread_said_n_a_not_zero(reported: Reported) -> None:
    data = json.loads((reported.index.parent / "report.json").read_text())
    measured = [r for r in data["accuracy"] if r["kind"] == "measured"]
    assert {(r["n_draws"], r["draw_std"], r["n_programmings"], r["programming_std"]) for r in measured} == {
        (1, None, 1, None)
    }
    forecast = [r for r in data["accuracy"] if r["kind"] == "forecast"]
    assert {(r["n_draws"], r["n_programmings"]) for r in forecast} == {(3, 1)}  # 3 synthetic reads each
    markdown = (reported.index.parent / "report.md").read_text()
    assert "n/a (1 read)" in markdown and "n/a (1 programming)" in markdown and "(3 reads)" in markdown
    assert "± 0.00 (1 read" not in markdown


def test_each_named_plot_is_served_as_png_or_svg(reported: Reported) -> None:
    for name in PLOT_NAMES:
        assert plot_bytes(reported.engine, reported.experiment_id, name).startswith(PNG_MAGIC)
    assert b"<svg" in plot_bytes(reported.engine, reported.experiment_id, "heatmap", "svg")[:2000]
    with pytest.raises(UnknownPlotError, match="available: accuracy"):
        plot_bytes(reported.engine, reported.experiment_id, "pie", "png")
    with pytest.raises(NotFoundError, match="experiment 999 does not exist"):
        plot_bytes(reported.engine, 999, "accuracy")


def test_an_experiment_not_yet_read_back_has_no_report(reported: Reported, tmp_path: Path) -> None:
    campaign = create_campaign(reported.engine, "sim://", points=READOUTS, station="idle-bench")
    with pytest.raises(NotReadyError, match="0 readouts"):
        build_report(reported.engine, campaign.experiment_id, tmp_path)


def test_cli_prints_the_report_path_and_a_summary(
    reported: Reported, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["report", str(reported.experiment_id), "--out", str(tmp_path / "r"),
                 "--database-url", reported.url, "--no-forecast"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert Path(lines[0]) == tmp_path / "r" / "index.html" and Path(lines[0]).is_file()
    assert lines[1].startswith(f"Experiment {reported.experiment_id}:")
    assert any("measured accuracy at" in line and "AdaBS" in line for line in lines)
    with reported.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(evaluations)).scalar_one() == 3 * READOUTS


def test_cli_forecasts_from_as_many_synthetic_reads_as_asked(
    reported: Reported, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    code = main(["report", str(reported.experiment_id), "--out", str(out), "--database-url", reported.url,
                 "--forecast-draws", "2"])  # fmt: skip
    assert code == 0
    accuracy = json.loads((out / "report.json").read_text())["accuracy"]
    assert {(r["n_draws"], r["n_programmings"]) for r in accuracy if r["kind"] == "forecast"} == {(2, 1)}
    for bad in ("0", "17", "two"):
        with pytest.raises(SystemExit):
            main(["report", str(reported.experiment_id), "--forecast-draws", bad])
    assert "forecast draws are 1 to 16" in capsys.readouterr().err


def test_cli_names_an_unknown_experiment(
    reported: Reported, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["report", "424242", "--out", str(tmp_path), "--database-url", reported.url])
    assert code == 2
    assert "experiment 424242 does not exist" in capsys.readouterr().err


def test_training_noise_comes_from_the_chips_measured_programming_error(reported: Reported) -> None:
    """The simulated chip programs as its model says: η ≈ median model σ_prog over bins / G_max."""
    eta = training_noise_eta(reported.engine, reported.experiment_id)
    data = json.loads((reported.index.parent / "report.json").read_text())
    bins = [b for b in data["statistics"]["bins"] if b["n_used"] > 0]
    modelled = float(np.median([b["model_prog_sigma_us"] for b in bins])) / data["statistics"]["g_max_us"]
    assert eta == pytest.approx(modelled, rel=0.15)


def test_device_ages_follow_each_blocks_own_read_time_not_the_readouts_start(reported: Reported) -> None:
    """On an accelerated clock the second half of a readout is read hours after the first."""
    with reported.engine.connect() as conn, conn.begin() as transaction:
        last = load_experiment(conn, reported.experiment_id).readouts[-1]
        half, later_s = last.n_devices // 2, last.board_time_s + 7200.0
        conn.execute(
            update(readouts)
            .where(readouts.c.id == last.id)
            .values(block_starts=[[0, last.board_time_s], [half, later_s]])
        )
        stored = load_experiment(conn, reported.experiment_id)
        transaction.rollback()
    programmed_s = stored.require_readouts()[1].programmed_s
    ages_s = stored.device_ages_s()[-1]
    np.testing.assert_allclose(ages_s[:half], last.board_time_s - programmed_s[:half])
    np.testing.assert_allclose(ages_s[half:], later_s - programmed_s[half:])
    last_measured_s = max(r.t_s for r in stored.measured)
    assert last_measured_s > last.board_time_s - stored.programmed_end_s + 3000.0


def _stored_fit(reported: Reported) -> StoredDeviceFit:
    with reported.engine.connect() as conn:
        run_id = load_experiment(conn, reported.experiment_id).run_id
        assert run_id is not None
        return latest_device_fit(conn, run_id)


def test_the_report_shows_the_drift_fit_the_analyze_job_stored(reported: Reported) -> None:
    stored = _stored_fit(reported)
    data = json.loads((reported.index.parent / "report.json").read_text())
    assert {k: data["drift_fit"][k] for k in ("id", "stored", "n_readouts")} == {
        "id": stored.id, "stored": True, "n_readouts": READOUTS
    }
    assert f"Drift fit #{stored.id}, stored by the analyze job" in reported.index.read_text()
    analysis = analyze_experiment(reported.engine, reported.experiment_id, forecast=False)
    np.testing.assert_array_equal(analysis.fit.nu, stored.nu)
    assert analysis.stats.to_dict() == stored.statistics


@pytest.mark.parametrize("stored_fit", ["absent", "older than the last readout"])
def test_without_a_current_stored_fit_the_report_fits_the_same_way_and_says_it_is_provisional(
    reported: Reported, stored_fit: str
) -> None:
    stored = _stored_fit(reported)
    with reported.engine.connect() as conn, conn.begin() as transaction:
        if stored_fit == "absent":
            conn.execute(delete(device_fits))
        else:
            conn.execute(update(device_fits).values(summary={**stored.summary, "n_readouts": READOUTS - 1}))
        analysis = analyze_experiment(conn, reported.experiment_id, forecast=False)
        provisional = analysis.run_fit
        transaction.rollback()
    assert provisional.fit_id is None and provisional.provenance.startswith("Provisional drift fit")
    assert provisional.n_readouts == READOUTS
    np.testing.assert_array_equal(provisional.lines.status, stored.status)
    np.testing.assert_allclose(provisional.lines.nu, stored.nu, rtol=1e-4)  # NaN where unfitted, too
    assert stored.statistics is not None
    assert provisional.statistics.to_dict()["outliers"] == stored.statistics["outliers"]
