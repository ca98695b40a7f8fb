"""A campaign that reads the programmed chip three times at each scheduled time (read
draws), run by the station worker on the simulated chip in virtual time: every draw is
stored, GDC is referenced to the mean of the t0 reads, and the report, the API and the
dashboard give the mean with its spread over the reads and the number of each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from api.app import create_app
from hwctl.analysis.stored import measured_accuracy
from hwctl.embedded_chip import SimChipOptions, start_embedded_chip
from hwctl.nn.data import load_dataset
from hwctl.nn.evaluation import ReadoutEvaluator
from hwctl.report import build_report
from hwctl.store.campaign import load_spec
from hwctl.store.engine import make_engine
from hwctl.store.migrate import upgrade
from hwctl.store.networks import load_network
from hwctl.store.readouts import first_offset_readouts, list_readouts, load_readout, load_run_device_map
from hwctl.store.schema import device_fits, evaluations, programming_runs, readouts
from hwctl.vocabulary import CompensationMethod, JobKind
from hwctl.worker import Worker
from tests.api.conftest import api_settings
from tests.service.conftest import SMALL_CHIP, create_campaign, job_statuses
from tests.service.test_campaign import run_until_idle

READS = 3
POINTS = 3


@dataclass(frozen=True)
class Drawn:
    engine: Engine
    url: str
    experiment_id: int
    run_id: int
    offsets_s: list[float]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drawn]:
    """The campaign, run once for every test here (on SQLite)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('draws') / 'hwctl.sqlite'}"
    engine = make_engine(url)
    upgrade(engine)
    chip = start_embedded_chip(SimChipOptions(virtual=True, geometry=SMALL_CHIP, seed=3))
    try:
        campaign = create_campaign(engine, chip.resource, points=POINTS, evaluate=True, reads_per_point=READS)
        run_until_idle(Worker(engine, campaign.station), engine, timeout_s=180.0)
    finally:
        chip.stop()
    with engine.connect() as conn:
        run_id = conn.execute(select(programming_runs.c.id)).scalar_one()
    yield Drawn(engine, url, campaign.experiment_id, run_id, campaign.offsets_s)
    engine.dispose()


def test_each_point_is_read_three_times_in_turn_and_the_drift_fit_sees_every_read(drawn: Drawn) -> None:
    assert job_statuses(drawn.engine, JobKind.READBACK) == ["succeeded"] * (POINTS * READS)
    assert job_statuses(drawn.engine, JobKind.ANALYZE) == ["succeeded"]
    with drawn.engine.connect() as conn:
        listed = list_readouts(conn, drawn.run_id)
        fit_summary = conn.execute(select(device_fits.c.summary)).scalar_one()
    assert [(r.offset_s, r.draw) for r in listed] == [(o, d) for o in drawn.offsets_s for d in range(READS)]
    # Stored in turn, draw 0 first (a virtual clock need not move between the reads of a point).
    assert [r.id for r in listed] == sorted(r.id for r in listed)
    assert [r.board_time_s for r in listed] == sorted(r.board_time_s for r in listed)
    assert fit_summary["n_readouts"] == POINTS * READS


def test_gdc_is_referenced_to_the_mean_of_the_t0_reads_and_says_how_many(drawn: Drawn) -> None:
    with drawn.engine.connect() as conn:
        t0_ids = first_offset_readouts(conn, drawn.run_id)
        mean_t0_us = np.mean([load_readout(conn, i).g_us for i in t0_ids], axis=0)
        stored = conn.execute(
            select(evaluations.c.readout_id, evaluations.c.method, evaluations.c.accuracy,
                   evaluations.c.settings, readouts.c.offset_s, readouts.c.draw)
            .join(readouts, readouts.c.id == evaluations.c.readout_id)
        ).all()  # fmt: skip
        spec = load_spec(conn, drawn.experiment_id)
        evaluator = ReadoutEvaluator(
            load_network(conn, spec.network_id), load_run_device_map(conn, drawn.run_id), None
        )
        last = [r for r in stored if r.offset_s == drawn.offsets_s[-1] and r.method == CompensationMethod.GDC]
        g_last = {r.readout_id: load_readout(conn, r.readout_id).g_us for r in last}
    assert len(t0_ids) == READS
    for r in stored:
        assert r.settings["t0_readout_id"] == t0_ids[0]
        if r.offset_s == drawn.offsets_s[0]:  # a t0 draw may be evaluated before the later ones exist
            assert r.draw + 1 <= r.settings["t0_reads"] <= READS
        else:
            assert r.settings["t0_reads"] == READS
    images = load_dataset(spec.evaluation.dataset, "test").subset(spec.evaluation.n_images)
    for r in last:
        again = evaluator.evaluate(images, g_last[r.readout_id], CompensationMethod.GDC, mean_t0_us)
        assert again.accuracy == pytest.approx(r.accuracy)


def test_report_api_and_dashboard_give_the_mean_with_its_spread_over_three_reads(
    drawn: Drawn, tmp_path: Path
) -> None:
    with drawn.engine.connect() as conn:
        measured = measured_accuracy(conn, drawn.experiment_id)
        stored = conn.execute(select(evaluations.c.method, evaluations.c.accuracy)).all()
    assert len(measured) == POINTS * 3  # every method at every point
    assert all((r.n_draws, r.n_programmings, r.programming_std) == (READS, 1, None) for r in measured)
    assert all(r.draw_std is not None for r in measured)
    assert any(r.draw_std > 0 for r in measured if r.draw_std is not None)  # the read noise shows
    for method in CompensationMethod:
        means = [r.accuracy for r in measured if r.method == method]
        assert sum(means) * READS == pytest.approx(sum(a for m, a in stored if m == method))

    with TestClient(create_app(api_settings(drawn.url))) as client:
        points = client.get(f"/experiments/{drawn.experiment_id}/accuracy").json()
        page = client.get(f"/dashboard/experiments/{drawn.experiment_id}").text
        detail = client.get(f"/experiments/{drawn.experiment_id}").json()
    assert [(p["offset_s"], p["method"]) for p in points] == [
        (o, m) for o in drawn.offsets_s for m in CompensationMethod
    ]
    assert {(p["n_draws"], p["n_programmings"], p["programming_std_pct"]) for p in points} == {
        (READS, 1, None)
    }
    assert [p["draw_std_pct"] for p in points] == pytest.approx([r.draw_std for r in measured])
    assert detail["progress"]["readouts_planned"] == detail["progress"]["readouts_done"] == POINTS * READS
    assert {r["draw"] for r in detail["readouts"]} == set(range(READS))
    assert {e["t0_reads"] for e in detail["evaluations"] if e["offset_s"] != drawn.offsets_s[0]} == {READS}
    assert f"({READS} reads)" in page and "n/a (1 programming)" in page

    index = build_report(drawn.engine, drawn.experiment_id, tmp_path / "report")
    data = json.loads((index.parent / "report.json").read_text())
    kinds = {(r["kind"], r["n_draws"], r["n_programmings"]) for r in data["accuracy"]}
    assert kinds == {("measured", READS, 1), ("forecast", 3, 1)}
    markdown = (index.parent / "report.md").read_text()
    assert "σ over read draws" in markdown and f"({READS} reads)" in markdown
    assert "n/a (1 programming)" in markdown
