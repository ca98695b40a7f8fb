"""The experiment report: plots, tables and a forecast that a newcomer can read without the code.

`build_report` writes a directory with `report.md`, `index.html` (self-contained, images
by relative path), `report.json` (every number, for machines) and each plot as PNG and
SVG; `plot_bytes` renders one plot for the API. The drift fit and chip statistics are
the ones the analyze job stored (`hwctl.analysis.run_fit`); before that job has run
(mid-campaign), the same fit of the readouts so far is computed and labelled
provisional, so a report always shows the data it was built from and says which fit it
is. Forecasts are labelled as such everywhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sqlalchemy import Connection, Engine

from drivers.pcm_model import PCMModel
from hwctl.analysis import document as doc
from hwctl.analysis.bounded_plots import bounded_figure
from hwctl.analysis.document import Block
from hwctl.analysis.fitted_model import eta_from_fit, fit_model
from hwctl.analysis.forecast import FORECAST_DRAWS, forecast_accuracy, horizon_label
from hwctl.analysis.plots import (
    AccuracyCurve,
    ImageFormat,
    accuracy_vs_time_figure,
    chip_heatmap_figure,
    conductance_histograms_figure,
    drift_vs_target_figure,
    histogram_picks,
    programming_error_figure,
    render,
)
from hwctl.analysis.run_fit import RunFit, fit_run, stored_run_fit
from hwctl.analysis.spread import AccuracyRecord, draws_text, programmings_text
from hwctl.analysis.statistics import ChipStatistics
from hwctl.analysis.stored import NotReadyError, StoredExperiment, load_experiment, open_connection
from hwctl.nn.data import DatasetMissingError
from hwctl.nn.evaluation import ReadoutEvaluator
from hwctl.program_verify import DeviceStatus
from hwctl.store.datasets import evaluation_calibration_images, evaluation_test_images
from hwctl.store.errors import NotFoundError
from hwctl.store.fits import FittedLines
from hwctl.store.inferences import SeriesPoint, series_points
from hwctl.store.networks import load_network
from hwctl.store.readouts import t0_mean_us
from hwctl.vocabulary import METHOD_LABELS, OUTLIERS_LISTED, CompensationMethod, gdc_statistic_text

PLOT_NAMES = ("accuracy", "histograms", "programming_error", "drift", "heatmap")


class UnknownPlotError(NotFoundError):
    """Not one of `PLOT_NAMES`."""


@dataclass
class ExperimentAnalysis:
    """A stored experiment with its drift fit, statistics and (optionally) forecast.

    `drift_fit` is the analyze job's fit when it covers every readout; without it the fit
    of the readouts so far, computed (streamed from the store) when the experiment is
    loaded and labelled provisional; None before the first readout.
    `base_model` is the device model the plots draw beside the measurements, the one
    the statistics compare with.
    """

    stored: StoredExperiment
    drift_fit: RunFit | None = None
    forecast: list[AccuracyRecord] = field(default_factory=list)
    forecast_note: str = "forecast not requested"
    base_model: PCMModel = field(default_factory=PCMModel)
    # Re-evaluations of stored readouts with other settings, drawn beside the measured curves.
    series: list[SeriesPoint] = field(default_factory=list)

    @property
    def run_fit(self) -> RunFit:
        if self.drift_fit is None:
            self.stored.require_readouts()  # raises: no readouts yet
            raise NotReadyError(f"experiment {self.stored.experiment_id} has no drift fit")
        return self.drift_fit

    @property
    def fit(self) -> FittedLines:
        return self.run_fit.lines

    @property
    def stats(self) -> ChipStatistics:
        return self.run_fit.statistics

    @cached_property
    def noise_model(self) -> tuple[PCMModel, str]:
        """The model fitted to this chip's bins, or the base model where they do not determine one."""
        try:
            return fit_model(self.stats, self.base_model), "fitted to this chip"
        except ValueError as exc:
            return self.base_model, f"simulator default ({exc})"

    def figure(self, name: str) -> Figure:
        if name not in _FIGURES:
            raise UnknownPlotError(f"unknown plot {name!r}; available: {', '.join(PLOT_NAMES)}")
        return _FIGURES[name](self)


def analyze_experiment(
    db: Engine | Connection,
    experiment_id: int,
    *,
    forecast: bool = True,
    seed: int = 0,
    forecast_draws: int = FORECAST_DRAWS,
) -> ExperimentAnalysis:
    """Load the experiment and, if asked and possible, forecast its accuracy from
    `forecast_draws` synthetic reads per horizon (`hwctl.analysis.forecast`)."""
    with open_connection(db) as conn:
        stored = load_experiment(conn, experiment_id)
        run_fit = stored_run_fit(conn, stored)
        if run_fit is None and stored.readouts:
            run_fit = fit_run(conn, stored)
        analysis = ExperimentAnalysis(stored, run_fit, series=series_points(conn, experiment_id))
        if forecast:
            _add_forecast(analysis, conn, seed, forecast_draws)
    return analysis


def build_report(
    db: Engine | Connection, experiment_id: int, out_dir: str | Path, *, forecast: bool = True
) -> Path:
    """Write the report directory for `experiment_id`; returns the path of its index.html."""
    return write_report(analyze_experiment(db, experiment_id, forecast=forecast), out_dir)


def plot_bytes(db: Engine | Connection, experiment_id: int, name: str, fmt: ImageFormat = "png") -> bytes:
    """One plot as PNG/SVG bytes, measured data only (forecasts need a network evaluation)."""
    if name not in PLOT_NAMES:
        raise UnknownPlotError(f"unknown plot {name!r}; available: {', '.join(PLOT_NAMES)}")
    with open_connection(db) as conn:  # each plot reads only what it draws where it can
        figure = bounded_figure(conn, experiment_id, name)
        if figure is None and name == "accuracy":  # measured points and re-evaluations: no vectors
            light = load_experiment(conn, experiment_id, vectors=False)
            figure = ExperimentAnalysis(light, series=series_points(conn, experiment_id)).figure(name)
        if figure is None:
            figure = analyze_experiment(conn, experiment_id, forecast=False).figure(name)
    return render(figure, fmt)


def training_noise_eta(db: Engine | Connection, experiment_id: int) -> float:
    """η for noise-aware training (`hwctl train --noise-from EXPERIMENT_ID`), measured on this chip.

    Closes the loop of pcm-model.md §7: the median programming σ over target bins,
    as a fraction of G_max, replaces the default η with what the chip actually did.
    """
    return eta_from_fit(analyze_experiment(db, experiment_id, forecast=False).stats)


def write_report(analysis: ExperimentAnalysis, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in PLOT_NAMES:
        figure = analysis.figure(name)
        for fmt in ("png", "svg"):
            (out / f"{name}.{fmt}").write_bytes(render(figure, fmt))
    blocks = report_blocks(analysis)
    title = _title(analysis.stored)
    (out / "report.md").write_text(doc.to_markdown(blocks), encoding="utf-8")
    (out / "index.html").write_text(doc.to_html(blocks, title), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report_data(analysis), indent=1, allow_nan=False))
    return out / "index.html"


# -- forecast -------------------------------------------------------------------------------
def _add_forecast(analysis: ExperimentAnalysis, conn: Connection, seed: int, draws: int) -> None:
    stored, spec = analysis.stored, analysis.stored.spec.evaluation
    if not spec.enabled:
        analysis.forecast_note = "no forecast: evaluation is disabled for this experiment"
        return
    device_map, _ = stored.require_readouts()
    if not analysis.fit.ok.any():
        analysis.forecast_note = "no forecast: no device has a drift fit (fewer than 3 readouts?)"
        return
    try:
        test = evaluation_test_images(conn, spec)
        calibration = evaluation_calibration_images(conn, spec)
    except DatasetMissingError as exc:
        analysis.forecast_note = f"no forecast: {exc}"
        return
    evaluator = ReadoutEvaluator(load_network(conn, stored.spec.network_id), device_map, calibration,
                                 gdc_statistic=spec.gdc_statistic)  # fmt: skip
    model, source = analysis.noise_model
    analysis.forecast = forecast_accuracy(
        evaluator,
        test,
        analysis.fit,
        methods=spec.methods,
        model=model,
        g_reference_us=t0_mean_us(conn, stored.run_id)[0] if stored.run_id is not None else None,
        seed=seed,
        draws=draws,
    )
    analysis.forecast_note = (
        f"Forecast: each device's fitted line G(t0)·(t/t0)^−ν evaluated at the future time, plus "
        f"single-read noise from the read-noise law ({source}, q = {model.read_noise_q:.3g}), drawn "
        f"{draws} times per horizon; the network rebuilt from each is evaluated like a measured readout, "
        f"GDC referenced to the mean of the measured t0 reads. Mean and spread over those {draws} reads "
        f"of one programming (the fitted one): the spread over programmings is not forecast. "
        f"Not a measurement."
    )


# -- figures --------------------------------------------------------------------------------
def _accuracy(a: ExperimentAnalysis) -> Figure:
    curves = []
    for method in dict.fromkeys(r.method for r in a.stored.measured + a.forecast):
        measured = [r for r in a.stored.measured if r.method == method]
        predicted = [r for r in a.forecast if r.method == method]
        curves.append(
            AccuracyCurve(
                METHOD_LABELS[CompensationMethod(method)],
                [r.t_s for r in measured],
                [r.accuracy for r in measured],
                [r.t_s for r in predicted],
                [r.accuracy for r in predicted],
                [r.draw_std or 0.0 for r in measured],
                [r.draw_std or 0.0 for r in predicted],
            )
        )
    for series, method in dict.fromkeys((p.series, p.method) for p in a.series):
        points = [p for p in a.series if (p.series, p.method) == (series, method)]
        label = f"{METHOD_LABELS[CompensationMethod(method)]} · {series}"
        ages_s, accuracy_pct = [p.t_since_program_s for p in points], [p.accuracy_pct for p in points]
        curves.append(AccuracyCurve(label, ages_s, accuracy_pct))
    return accuracy_vs_time_figure(curves)


def _histograms(a: ExperimentAnalysis) -> Figure:
    a.stored.require_readouts()
    readouts, samples = a.stored.readouts, a.stored.g_samples_us  # whole, or blocks spread over the chip
    end_s = a.stored.programmed_end_s
    return conductance_histograms_figure(
        [
            (horizon_label(readouts[i].board_time_s - end_s), samples[i])
            for i in histogram_picks(len(readouts))
        ]
    )


def _heatmap(a: ExperimentAnalysis) -> Figure:
    device_map, _ = a.stored.require_readouts()
    return chip_heatmap_figure(a.fit.nu, device_map.addresses, a.stored.geometry)


_FIGURES: dict[str, Callable[[ExperimentAnalysis], Figure]] = {
    "accuracy": _accuracy,
    "histograms": _histograms,
    "programming_error": lambda a: programming_error_figure(a.stats, a.base_model),
    "drift": lambda a: drift_vs_target_figure(a.stats, a.base_model),
    "heatmap": _heatmap,
}


# -- text -----------------------------------------------------------------------------------
def _title(stored: StoredExperiment) -> str:
    return f"Experiment {stored.experiment_id}: {stored.name}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def programming_summary(stored: StoredExperiment) -> dict[str, Any]:
    """What was programmed and how program-and-verify went, as plain numbers."""
    device_map, programming = stored.require_readouts()
    nonzero = device_map.target_g_us > 0
    status = programming.status
    use = device_map.utilisation
    return {
        "network": stored.network_name,
        "architecture": stored.architecture,
        "devices": device_map.n_devices,
        "analog_weights": device_map.n_devices // 2,
        "nonzero_targets": int(nonzero.sum()),
        "tiles_used": use.tiles_used,
        "chip_fraction": use.fraction_of_chip,
        "used_tile_fraction": use.fraction_of_used_tiles,
        "converged_fraction_nonzero": float(np.mean(status[nonzero] == DeviceStatus.CONVERGED))
        if nonzero.any()
        else 1.0,
        "status_counts": {s.name.lower(): int((status == s).sum()) for s in DeviceStatus},
        "iterations_mean": float(programming.iterations[nonzero].mean()) if nonzero.any() else 0.0,
        "iterations_max": int(programming.iterations.max(initial=0)),
        "programming_span_s": float(np.ptp(programming.programmed_s)) if status.size else 0.0,
    }


def accuracy_table(records: Sequence[AccuracyRecord], methods: Sequence[str]) -> doc.Table:
    """One row per (kind, time): accuracy % (the mean over reads and programmings) with its
    95 % interval for each method."""
    cells: dict[tuple[str, float], dict[str, str]] = {}
    for r in records:
        ci = f" [{r.ci_low:.1f}–{r.ci_high:.1f}]" if r.ci_low is not None and r.ci_high is not None else ""
        cells.setdefault((r.kind, r.t_s), {})[r.method] = f"{r.accuracy:.1f}{ci}"
    labels = (METHOD_LABELS[CompensationMethod(m)] for m in methods)
    header = ["time since programming", "kind", *(f"{label} (%)" for label in labels)]
    rows = [
        [horizon_label(t_s), kind, *(by_method.get(m, "–") for m in methods)]
        for (kind, t_s), by_method in cells.items()
    ]
    return doc.Table(header, rows)


def spread_table(records: Sequence[AccuracyRecord]) -> doc.Table:
    """One row per (kind, time, method): the mean, its spread over read draws of one
    programmed state and over programmings, each with how many there were ('n/a' for one)."""
    header = ["time since programming", "kind", "method", "mean (%)", "σ over read draws (pt)",
              "σ over programmings (pt)"]  # fmt: skip
    rows = [
        [horizon_label(r.t_s), r.kind, METHOD_LABELS[CompensationMethod(r.method)], f"{r.accuracy:.1f}",
         draws_text(r), programmings_text(r)]
        for r in records
    ]  # fmt: skip
    return doc.Table(header, rows)


def bin_table(stats: ChipStatistics) -> doc.Table:
    header = [
        "G_T bin (µS)",
        "devices used",
        "σ_prog µS (meas / model)",
        "μ_ν (meas / model)",
        "σ_ν (meas / model)",
        "read noise σ/G (meas / model)",
    ]
    rows = [
        [
            f"{b.target_lo_us:g}–{b.target_hi_us:g}",
            str(b.n_used),
            f"{_num(b.prog_sigma_us)} / {_num(b.model_prog_sigma_us)}",
            f"{_num(b.nu_mean)} / {_num(b.model_nu_mean)}",
            f"{_num(b.nu_sigma)} / {_num(b.model_nu_sigma)}",
            f"{_num(b.read_noise_rel)} / {_num(b.model_read_noise_rel)}",
        ]
        for b in stats.bins
        if b.n_used > 0
    ]
    return doc.Table(header, rows)


def outlier_table(a: ExperimentAnalysis) -> doc.Table:
    device_map, _ = a.stored.require_readouts()
    rows = []
    for kind, indices in vars(a.stats.outliers).items():
        where = []
        for i in indices[:OUTLIERS_LISTED]:
            info = device_map.device_info(i)
            where.append(f"{info.layer} tile {info.tile} row {info.row} col {info.col}")
        rows.append([kind.replace("_", " "), str(len(indices)), "; ".join(where) or "–"])
    return doc.Table(["kind", "devices", f"first {OUTLIERS_LISTED} (layer, chip position)"], rows)


def programmed_bullets(stored: StoredExperiment) -> doc.Bullets:
    """What was programmed, how program-and-verify went, and when the readouts were taken."""
    p = programming_summary(stored)
    end_s = stored.programmed_end_s
    ages = [r.board_time_s - end_s for r in stored.readouts]
    late = max(r.board_time_s - r.scheduled_s for r in stored.readouts)
    n_points = len({r.offset_s for r in stored.readouts})
    draws = "" if n_points == len(stored.readouts) else f" at {n_points} times (several reads each)"
    outcomes = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in p["status_counts"].items())
    return doc.Bullets([
        f"{p['analog_weights']:,} analog weights on {p['devices']:,} devices "
        f"({p['nonzero_targets']:,} with a non-zero target), {p['tiles_used']} tile(s): "
        f"{100 * p['chip_fraction']:.2f} % of the chip, "
        f"{100 * p['used_tile_fraction']:.1f} % of the used tiles.",
        f"Program-and-verify converged for {100 * p['converged_fraction_nonzero']:.2f} % of the "
        f"non-zero targets in {p['iterations_mean']:.1f} iterations on average "
        f"(at most {p['iterations_max']}); outcomes: {outcomes}.",
        f"Programming spanned {p['programming_span_s']:.3g} s of station time (first to last device).",
        f"{len(stored.readouts)} readouts{draws} from {horizon_label(min(ages))} to "
        f"{horizon_label(max(ages))} after programming; the latest started {late:.3g} s after its "
        "scheduled time.",
    ])  # fmt: skip


def report_blocks(a: ExperimentAnalysis) -> list[Block]:
    s = a.stored
    n_fitted = int(a.fit.ok.sum())
    methods = list(s.spec.evaluation.methods)
    statistic = s.spec.evaluation.gdc_statistic
    return [
        doc.Heading(_title(s), 1),
        doc.Paragraph(
            f"Network '{s.network_name}' ({s.architecture}) on station '{s.station_name}' "
            f"({s.geometry.tiles} tiles of {s.geometry.rows}×{s.geometry.cols} PCM devices). "
            f"Status: {s.status}. "
            "Every weight is a differential pair of devices (W ∝ G+ − G−), programmed by iterative "
            "program-and-verify, then read back on a log-spaced schedule while the conductances drift."
        ),
        doc.Heading("What was programmed"),
        programmed_bullets(s),
        doc.Heading("Accuracy over time"),
        doc.Paragraph(
            "Top-1 test accuracy of the network rebuilt from each readout, with 95 % Wilson intervals, for "
            "each compensation: none, GDC (global drift compensation: one gain per layer, the ratio "
            "S_l(t0)/S_l(t) of a per-layer statistic) and AdaBS (batch-norm statistics re-estimated on "
            f"calibration images, after GDC). GDC statistic: {gdc_statistic_text(statistic)}. "
            "Rows marked 'forecast' are extrapolations, not measurements."
        ),
        accuracy_table(s.measured + a.forecast, methods),
        doc.Paragraph(a.forecast_note, note=True),
        doc.Paragraph(
            "Spread: a campaign may read the chip several times at each time (read draws: the same "
            "programmed state, new read noise) and an experiment may be programmed more than once (each "
            "programming draws new programming errors and drift exponents). Each accuracy above is the "
            "mean over both; below, the standard deviation over read draws (pooled within each "
            "programming) and over programmings (of their means), with how many of each; 'n/a' where "
            "there is only one."
        ),
        spread_table(s.measured + a.forecast),
        doc.Image(
            "accuracy",
            "Accuracy vs time since programming: measured (solid) and forecast (dashed); error bars "
            "± one standard deviation over read draws where there are several.",
        ),
        doc.Heading("Conductances"),
        doc.Image(
            "histograms",
            "Conductance distribution of all devices at several readouts (drift moves "
            "the distribution towards 0 over time).",
        ),
        doc.Image("programming_error", "Programming error G(t0) − G_T per target bin beside the model."),
        doc.Heading("Drift and read noise per target bin"),
        doc.Paragraph(
            f"Per device, ln G was fitted as a straight line in ln t (t0 = {a.fit.t0_s:g} s): ν is the drift "
            "exponent and the scatter around the line the relative read noise. Each bin's measured value "
            "sits beside what the simulator's device model predicts for the same devices; a ratio near 1 "
            f"means the chip behaves as modelled. {n_fitted:,} of {a.fit.n_devices:,} devices have a fit."
        ),
        doc.Paragraph(a.run_fit.provenance, note=True),
        bin_table(a.stats),
        doc.Image("drift", "Drift exponent ν vs target conductance: measured μ_ν ± σ_ν beside the model."),
        doc.Image("heatmap", "Chip map of the fitted drift exponent ν (blank: unused or unfitted devices)."),
        doc.Heading("Outliers"),
        doc.Paragraph(
            "Stuck: does not drift and is far from target. Dead: never read above 0. Fast drifters: ν well "
            "above its bin's spread. Non-converged: program-and-verify gave up on it."
        ),
        outlier_table(a),
    ]


def report_data(a: ExperimentAnalysis) -> dict[str, Any]:
    """Every number of the report as JSON-ready data."""
    s = a.stored
    stats = a.stats.to_dict()
    outliers = vars(a.stats.outliers).items()
    stats["outliers"] = {k: {"count": len(v), "first": v[:OUTLIERS_LISTED]} for k, v in outliers}
    return {
        "experiment": {"id": s.experiment_id, "name": s.name, "status": s.status, "station": s.station_name},
        "programming": programming_summary(s),
        "accuracy": [r.to_dict() for r in s.measured + a.forecast],
        "forecast_note": a.forecast_note,
        "drift_fit": {
            "id": a.run_fit.fit_id,
            "stored": a.run_fit.fit_id is not None,
            "n_readouts": a.run_fit.n_readouts,
            "note": a.run_fit.provenance,
        },
        "statistics": stats,
    }


def summary_lines(a: ExperimentAnalysis) -> list[str]:
    """A one-screen summary for the command line."""
    p = programming_summary(a.stored)
    lines = [
        _title(a.stored),
        f"  {p['network']} ({p['architecture']}): {p['devices']:,} devices, "
        f"{100 * p['converged_fraction_nonzero']:.2f} % converged, {len(a.stored.readouts)} readouts",
    ]
    for kind, records in (("measured", a.stored.measured), ("forecast", a.forecast)):
        if records:
            last_t = max(r.t_s for r in records)
            shown = ", ".join(
                f"{METHOD_LABELS[CompensationMethod(r.method)]} {r.accuracy:.1f} %"
                for r in records
                if r.t_s == last_t
            )
            lines.append(f"  {kind} accuracy at {horizon_label(last_t)}: {shown}")
    outliers = ", ".join(f"{k.replace('_', ' ')} {len(v)}" for k, v in vars(a.stats.outliers).items())
    lines.append(f"  outliers: {outliers}")
    return lines
