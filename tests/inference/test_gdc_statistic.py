"""GDC's per-layer statistic as a setting, over the real API (uvicorn, a worker, a simulated
chip on TCP), on SQLite and PostgreSQL: an experiment's evaluations and an inference run
with the statistic asked for, store it and show it; the report names it; an unknown one is
refused, listing the known ones, before anything is queued."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from hwctl.analysis import document as doc
from hwctl.cli import main
from hwctl.jobs.context import JobContext
from hwctl.jobs.evaluate import _evaluator
from hwctl.report import analyze_experiment, report_blocks
from hwctl.store.campaign import load_spec
from hwctl.store.engine import make_engine
from hwctl.store.readouts import load_readout
from hwctl.vocabulary import DEFAULT_GDC_STATISTIC, GdcStatistic, JobKind
from tests.api.conftest import AUTH
from tests.inference.conftest import OFFSETS_S, Live, digits_checkpoint, live_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
DIGITS = 1  # the built-in digits test set's id
# The experiment's statistic: not the default, so that taking the default would show.
CHOSEN = next(s for s in (GdcStatistic.ABS_WEIGHTS, GdcStatistic.BOTH_BITLINES) if s != DEFAULT_GDC_STATISTIC)
METHODS = ["none", "gdc"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    evaluation = {"methods": METHODS, "n_images": 100, "gdc_statistic": CHOSEN}
    network = ("digits.pt", digits_checkpoint())
    with live_service(request.param, tmp_path_factory.mktemp("db"), network, evaluation) as service:
        yield service


def _evaluations(live: Live, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """The experiment's evaluations, once every readout has one per method."""
    expected = len(OFFSETS_S) * len(METHODS)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert live.worker.error is None, live.worker.error
        page = live.client.get("/evaluations", params={"experiment_id": live.experiment_id}).json()
        if page["total"] >= expected:
            return list(page["items"])
        time.sleep(0.1)
    raise AssertionError(f"fewer than {expected} evaluations after {timeout_s} s: {page}")


def _compute_lane(engine: Engine) -> JobContext:
    """A compute-lane job context with no job behind it: for calling what a handler builds."""
    return JobContext(
        engine=engine, station=None, station_id=0, job_id=0, kind=JobKind.EVALUATE, checkpoint=None,
        heartbeat=lambda *_: True, complete=lambda _: None, stopping=lambda: False, overtaken=lambda: False,
        retrying=lambda _, attempt: attempt(),
    )  # fmt: skip


def _unknown(response: Any) -> None:
    """A 422 problem naming the field and every known statistic."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    detail = response.json()["detail"]
    assert "gdc_statistic" in detail, detail
    for statistic in GdcStatistic:
        assert statistic.value in detail, detail


def test_the_experiment_s_evaluations_run_with_its_statistic_store_it_and_the_report_names_it(
    live: Live,
) -> None:
    experiment = live.client.get(f"/experiments/{live.experiment_id}").json()
    assert experiment["spec"]["evaluation"]["gdc_statistic"] == CHOSEN
    evaluations = _evaluations(live)
    assert {e["gdc_statistic"] for e in evaluations} == {CHOSEN}
    one = live.client.get(f"/evaluations/{evaluations[0]['id']}").json()
    assert one["gdc_statistic"] == CHOSEN

    engine = make_engine(live.url)
    try:
        with engine.connect() as conn:  # the evaluator the job builds takes it (not only the stored row)
            run_id = load_readout(conn, live.readout_ids[0]).run_id
            evaluator = _evaluator(_compute_lane(engine), conn, load_spec(conn, live.experiment_id), run_id)
        assert evaluator.gdc_statistic == CHOSEN
        analysis = analyze_experiment(engine, live.experiment_id, forecast=False)
    finally:
        engine.dispose()
    assert f"GDC statistic: {CHOSEN}" in doc.to_markdown(report_blocks(analysis))


def test_an_inference_takes_the_default_or_the_statistic_asked_for_and_calibration_batch_needs_no_adabs(
    live: Live,
) -> None:
    url = f"/experiments/{live.experiment_id}/inferences"
    at = live.readout_ids[-1]
    gdc = {"dataset_id": DIGITS, "at": at, "methods": ["gdc"]}
    default = live.client.post(url, json=gdc)
    assert default.status_code == 202, default.text
    assert default.json()["inference"]["spec"]["gdc_statistic"] == DEFAULT_GDC_STATISTIC
    chosen = live.client.post(url, json={**gdc, "gdc_statistic": CHOSEN})
    assert chosen.json()["inference"]["spec"]["gdc_statistic"] == CHOSEN
    logits = []
    for accepted in (default, chosen):
        assert live.wait(accepted.json()["job"]["id"])["status"] == "succeeded"
        download = live.client.get(f"/inferences/{accepted.json()['inference']['id']}/logits.npy")
        logits.append(np.load(io.BytesIO(download.content)))
    assert not np.allclose(*logits)  # the statistic reached the gains: the same readout, other logits

    body = {"dataset_id": DIGITS, "at": at, "methods": METHODS, "gdc_statistic": "calibration-batch"}
    accepted = live.client.post(url, json=body)
    assert accepted.status_code == 202, accepted.text
    job = live.wait(accepted.json()["job"]["id"])
    assert job["status"] == "succeeded", job  # its calibration images found without AdaBS
    inference = live.client.get(f"/inferences/{accepted.json()['inference']['id']}").json()
    assert inference["spec"]["gdc_statistic"] == "calibration-batch"
    assert [r["method"] for r in inference["summary"]["results"]] == METHODS


def test_an_unknown_statistic_is_refused_listing_the_known_ones_before_anything_is_queued(live: Live) -> None:
    jobs, experiments = live.infer_jobs(), live.client.get("/experiments").json()["total"]
    base = f"/experiments/{live.experiment_id}"
    inference = {"dataset_id": DIGITS, "at": "now", "gdc_statistic": "column-mean"}
    _unknown(live.client.post(f"{base}/inferences", json=inference))
    first, last = live.readout_ids[0], live.readout_ids[-1]
    reevaluation = {"series": "mean", "first_readout_id": first, "last_readout_id": last,
                    "dataset_id": DIGITS, "gdc_statistic": "mean"}  # fmt: skip
    _unknown(live.client.post(f"{base}/evaluations", json=reevaluation))
    experiment = live.client.get(base).json()
    submission = {"network_id": experiment["network_id"], "station": experiment["station"],
                  "evaluation": {"gdc_statistic": "signed"}}  # fmt: skip
    _unknown(live.client.post("/experiments", json=submission))
    assert live.infer_jobs() == jobs
    assert live.client.get("/experiments").json()["total"] == experiments


def test_hwctl_infer_sends_the_statistic_and_prints_it(
    live: Live, capsys: pytest.CaptureFixture[str]
) -> None:
    api = ["--api", str(live.client.base_url), "--api-key", AUTH["X-API-Key"]]
    command = ["infer", str(live.experiment_id), "--dataset", str(DIGITS), "--at", str(live.readout_ids[0]),
               "--method", "gdc", *api]  # fmt: skip
    assert main([*command, "--gdc-statistic", str(CHOSEN)]) == 0
    assert f"GDC statistic: {CHOSEN}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main([*command, "--gdc-statistic", "signed"])
    assert refused.value.code == 2
    assert "calibration-batch" in capsys.readouterr().err
