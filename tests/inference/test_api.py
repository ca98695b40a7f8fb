"""Inference jobs over the real API (uvicorn, a worker, a simulated chip on TCP), on SQLite
and PostgreSQL: data sets as resources, inferences at a stored readout and now, and every
bad input refused with a problem before anything is queued."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, update

from hwctl.cli import main
from hwctl.nn.data import load_digits
from hwctl.report import analyze_experiment
from hwctl.store.engine import make_engine
from hwctl.store.readouts import add_readout, start_programming_run
from hwctl.store.records import add_experiment, add_mapping
from hwctl.store.schema import experiments
from tests.api.conftest import AUTH
from tests.inference.conftest import OFFSETS_S, Live, npz_bytes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
DIGITS, CIFAR10 = 1, 2  # the built-in data sets' ids


def problem(response: Any, status: int, *phrases: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = dict(response.json())
    for phrase in phrases:
        assert phrase in body["detail"], body["detail"]
    return body


def upload(live: Live, data: bytes, filename: str = "set.npz", **form: str) -> Any:
    files = {"file": (filename, io.BytesIO(data), "application/octet-stream")}
    return live.client.post("/datasets", files=files, data=form)


def events(live: Live, job_id: int) -> list[tuple[str, dict[str, Any]]]:
    out, name = [], ""
    with live.client.stream("GET", f"/jobs/{job_id}/events") as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                out.append((name, json.loads(line.removeprefix("data: "))))
    return out


def test_built_in_data_sets_are_listed(live: Live) -> None:
    listed = live.client.get("/datasets").json()["items"]
    builtins = {(d["builtin"], d["split"]): d for d in listed if d["builtin"]}
    assert set(builtins) == {(name, split) for name in ("digits", "cifar10") for split in ("test", "train")}
    assert (
        builtins["digits", "test"]["image_shape"] == [1, 8, 8]
        and builtins["digits", "test"]["n_images"] == 449
    )
    assert builtins["digits", "train"]["n_images"] == 1_348  # the rest of scikit-learn's 1,797
    for split, n_images in (("test", 10_000), ("train", 50_000)):
        cifar10 = builtins["cifar10", split]
        assert (
            cifar10["image_shape"] == [3, 32, 32] and cifar10["labelled"] and cifar10["n_images"] == n_images
        )


def test_inference_at_a_stored_readout_gives_accuracy_confusion_logits_and_predictions(live: Live) -> None:
    readout_id = live.readout_ids[-1]
    body = {"dataset_id": DIGITS, "at": readout_id, "methods": ["none", "gdc"], "top_k": 3}
    accepted = live.client.post(f"/experiments/{live.experiment_id}/inferences", json=body)
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()["job"]
    assert job["kind"] == "infer" and live.lane(job["id"]) == "compute"
    assert accepted.headers["Location"] == f"/inferences/{accepted.json()['inference']['id']}"
    stream = events(live, job["id"])
    assert stream[-1][0] == "end" and stream[-1][1]["status"] == "succeeded", stream[-1]

    inference = live.client.get(accepted.headers["Location"]).json()
    assert inference["status"] == "succeeded" and inference["readout_id"] == readout_id
    readout = live.client.get(f"/readouts/{readout_id}").json()
    assert inference["t_since_program_s"] == pytest.approx(readout["offset_s"], rel=0.05)
    results = inference["summary"]["results"]
    assert [(r["method"], r["repeat"]) for r in results] == [("none", 0), ("gdc", 0)]
    for r in results:
        confusion = np.array(r["confusion"])
        assert confusion.shape == (10, 10) and confusion.sum() == 449
        assert r["n_correct"] == np.trace(confusion)
        assert r["accuracy_pct"] == pytest.approx(100 * np.trace(confusion) / 449)
        assert r["top_k_accuracy_pct"] >= r["accuracy_pct"]

    logits = np.load(io.BytesIO(live.client.get(f"{accepted.headers['Location']}/logits.npy").content))
    assert logits.shape == (2, 1, 449, 10) and logits.dtype == np.float32
    top = np.load(io.BytesIO(live.client.get(f"{accepted.headers['Location']}/predictions.npy").content))
    assert top.shape == (2, 1, 449, 3)
    assert np.array_equal(top[..., 0], logits.argmax(-1))
    page = live.client.get(f"{accepted.headers['Location']}/predictions",
                           params={"method": "gdc", "offset": 440, "limit": 20}).json()  # fmt: skip
    assert len(page["top_k"]) == 9 and page["labels"] == load_digits("test").y[440:].tolist()
    assert [row[0] for row in page["top_k"]] == logits[1, 0, 440:].argmax(-1).tolist()


def test_inference_now_reads_the_chip_afresh_and_stores_the_readout(live: Live) -> None:
    before = live.client.get("/readouts", params={"experiment_id": live.experiment_id}).json()["total"]
    body = {"dataset_id": DIGITS, "at": "now", "repeats": 2,
            "periphery": {"dac_bits": 8, "adc_bits": 8, "output_noise_rel": 0.02}}  # fmt: skip
    accepted = live.client.post(f"/experiments/{live.experiment_id}/inferences", json=body)
    assert accepted.status_code == 202, accepted.text
    assert live.lane(accepted.json()["job"]["id"]) == "chip"
    job = live.wait(accepted.json()["job"]["id"])
    assert job["status"] == "succeeded", job["error"]
    inference = live.client.get(accepted.headers["Location"]).json()
    readouts = inference["summary"]["readouts"]
    assert len(readouts) == 2 and len({r["readout_id"] for r in readouts}) == 2  # a fresh read per repeat
    after = live.client.get("/readouts", params={"experiment_id": live.experiment_id}).json()["total"]
    assert after == before + 2
    assert all(r["t_since_program_s"] >= 2500.0 for r in readouts)
    assert [r["readout_id"] for r in inference["summary"]["results"]] == [r["readout_id"] for r in readouts]


def test_a_data_set_is_stored_once_and_an_uploaded_batch_runs_as_inputs(live: Live) -> None:
    digits = load_digits("test")
    data = npz_bytes(x=digits.x[:50].transpose(0, 3, 1, 2).copy(), y=digits.y[:50])  # NCHW
    first = upload(live, data, "fifty.npz")
    assert first.status_code == 201, first.text
    again = upload(live, data, "renamed.npz")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    stored = first.json()
    assert stored["layout"] == "NCHW" and stored["image_shape"] == [1, 8, 8] and stored["n_classes"] == 10

    batch = io.BytesIO()
    np.save(batch, digits.x[:7])  # NHWC uint8, no labels
    spec = {"at": live.readout_ids[0], "top_k": 2}
    files = {"inputs": ("seven.npy", batch.getvalue(), "application/octet-stream")}
    accepted = live.client.post(f"/experiments/{live.experiment_id}/inferences",
                                data={"spec": json.dumps(spec)}, files=files)  # fmt: skip
    assert accepted.status_code == 202, accepted.text
    assert live.wait(accepted.json()["job"]["id"])["status"] == "succeeded"
    inference = live.client.get(accepted.headers["Location"]).json()
    summary = inference["summary"]
    assert summary["labelled"] is False and "accuracy_pct" not in summary["results"][0]
    logits = np.load(io.BytesIO(live.client.get(f"{accepted.headers['Location']}/logits.npy").content))
    assert logits.shape == (1, 1, 7, 10)


def test_an_idempotency_key_returns_the_same_inference(live: Live) -> None:
    body = {"dataset_id": DIGITS, "at": live.readout_ids[0]}
    key = {"Idempotency-Key": "same-inference-1"}
    first = live.client.post(f"/experiments/{live.experiment_id}/inferences", json=body, headers=key)
    second = live.client.post(f"/experiments/{live.experiment_id}/inferences", json=body, headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json()["inference"]["id"] == second.json()["inference"]["id"]
    assert first.json()["job"]["id"] == second.json()["job"]["id"]
    live.wait(first.json()["job"]["id"])


def test_an_idempotency_key_reused_with_another_body_is_422(live: Live) -> None:
    """Answered with the first inference, the second body's settings were silently dropped."""
    key = {"Idempotency-Key": "same-inference-2"}
    url = f"/experiments/{live.experiment_id}/inferences"
    body = {"dataset_id": DIGITS, "at": live.readout_ids[0]}
    first = live.client.post(url, json=body, headers=key)
    other = live.client.post(url, json=body | {"top_k": 3}, headers=key)
    assert first.status_code == 202
    assert other.status_code == 422 and "another body" in other.json()["detail"]
    live.wait(first.json()["job"]["id"])


@pytest.mark.parametrize(
    ("body", "status", "phrases"),
    [
        ({"dataset_id": CIFAR10, "at": "now"}, 422, ("1×8×8", "3×32×32")),  # does not fit the network
        ({"dataset_id": 999, "at": "now"}, 422, ("data set 999 does not exist",)),
        ({"dataset_id": DIGITS, "at": 99_999}, 422, ("readout 99999 is not a readout of experiment",)),
        ({"dataset_id": DIGITS, "at": "later"}, 422, ("at",)),
        ({"dataset_id": DIGITS, "at": "now", "methods": ["none", "none"]}, 422, ("once",)),
        ({"dataset_id": DIGITS, "at": "now", "methods": ["magic"]}, 422, ("methods",)),
        ({"dataset_id": DIGITS, "at": "now", "repeats": 0}, 422, ("repeats",)),
        ({"dataset_id": DIGITS, "at": "now", "periphery": {"output_noise_rel": -1}}, 422, ("noise",)),
        ({"dataset_id": DIGITS, "at": "now", "periphery": {"adc_bits": 64}}, 422, ("adc_bits",)),
        ({"at": "now"}, 422, ("exactly one of dataset_id",)),
    ],
)
def test_bad_submissions_are_refused_and_nothing_is_queued(
    live: Live, body: dict[str, Any], status: int, phrases: tuple[str, ...]
) -> None:
    before = live.infer_jobs()
    problem(live.client.post(f"/experiments/{live.experiment_id}/inferences", json=body), status, *phrases)
    assert live.infer_jobs() == before


def test_repeats_at_a_stored_readout_need_periphery_noise(live: Live) -> None:
    before = live.infer_jobs()
    body = {"dataset_id": DIGITS, "at": live.readout_ids[0], "repeats": 3}
    response = live.client.post(f"/experiments/{live.experiment_id}/inferences", json=body)
    problem(response, 422, "output_noise_rel")
    assert live.infer_jobs() == before


def test_an_unknown_experiment_is_404(live: Live) -> None:
    problem(live.client.post("/experiments/99999/inferences", json={"dataset_id": DIGITS, "at": "now"}), 404)


@pytest.mark.parametrize(
    ("data", "status", "phrase"),
    [
        (npz_bytes(x=np.full((3, 1, 8, 8), np.nan, np.float32)), 422, "NaN or inf"),
        (npz_bytes(x=np.zeros((3, 1, 8, 8), np.float64)), 422, "uint8 or float32"),
        (npz_bytes(x=np.zeros((3, 8, 8), np.uint8)), 422, "4-D"),
        (npz_bytes(x=np.zeros((3, 1, 8, 8), np.uint8), y=np.zeros(4, np.int64)), 422, "one label per image"),
        (npz_bytes(x=np.zeros((3, 1, 8, 8), np.uint8), w=np.zeros(1)), 422, "holds x"),
        (npz_bytes(x=np.array([None, 1], dtype=object)), 422, "pickle"),
        (b"not an array at all", 422, "neither"),
    ],
)
def test_bad_data_sets_are_refused_with_a_problem(live: Live, data: bytes, status: int, phrase: str) -> None:
    before = live.client.get("/datasets").json()["total"]
    problem(upload(live, data), status, phrase)
    assert live.client.get("/datasets").json()["total"] == before


def test_hwctl_infer_uploads_a_file_follows_the_job_and_prints_accuracy(
    live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digits = load_digits("test")
    path = tmp_path / "digits.npz"
    path.write_bytes(npz_bytes(x=digits.x[:40], y=digits.y[:40]))  # NHWC
    logits = tmp_path / "logits.npy"
    api = ["--api", str(live.client.base_url), "--api-key", AUTH["X-API-Key"]]
    code = main(["infer", str(live.experiment_id), "--input", str(path), "--at", str(live.readout_ids[0]),
                 "--method", "none,gdc", "--adc-bits", "8", "--logits", str(logits), *api])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "40 images, 10 classes" in out and "   gdc repeat 0" in out and "confusion (none" in out
    assert np.load(logits).shape == (2, 1, 40, 10)

    assert main(["infer", "99999", "--dataset", "1", "--at", "now", *api]) == 2
    assert "experiment 99999 does not exist" in capsys.readouterr().err


def test_targets_and_readouts_leave_as_aihwkit_fusion_csv_and_targets_come_back(live: Live) -> None:
    base = f"/experiments/{live.experiment_id}"
    targets_csv = live.client.get(f"{base}/export/aihwkit-fusion.csv")
    assert targets_csv.status_code == 200 and targets_csv.headers["content-type"].startswith("text/csv")
    lines = targets_csv.text.splitlines()
    assert lines[1].split(",")[0] == "AnalogConv2d" and lines[5].split(",")[0] == "conv1"
    at_readout = {"readout_id": live.readout_ids[0]}
    readout_csv = live.client.get(f"{base}/export/aihwkit-fusion.csv", params=at_readout)
    assert readout_csv.status_code == 200 and readout_csv.text.splitlines()[:6] == lines[:6]

    files = {"file": ("targets.csv", targets_csv.content, "text/csv")}
    imported = live.client.post(f"{base}/import/aihwkit-fusion.csv", files=files)
    assert imported.status_code == 200, imported.text
    targets = np.load(io.BytesIO(imported.content))
    g_us = np.load(io.BytesIO(live.client.get(f"/readouts/{live.readout_ids[0]}/vector").content))
    assert targets.shape == g_us.shape
    programmed = targets > 1.0
    assert np.median(np.abs(g_us[programmed] - targets[programmed])) < 2.0  # programmed to these, 25 s ago

    bad = {"file": ("other.csv", "1,2\nAnalogLinear\n", "text/csv")}
    problem(live.client.post(f"{base}/import/aihwkit-fusion.csv", files=bad), 422, "header line 1")
    problem(live.client.get(f"{base}/export/aihwkit-fusion.csv", params={"readout_id": 99_999}), 404)


def test_a_cancelled_inference_stops_and_has_no_results(live: Live) -> None:
    body = {"dataset_id": DIGITS, "at": "now", "repeats": 50}
    accepted = live.client.post(f"/experiments/{live.experiment_id}/inferences", json=body)
    assert accepted.status_code == 202, accepted.text
    cancelled = live.client.post(f"{accepted.headers['Location']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    job = live.wait(accepted.json()["job"]["id"])
    assert job["status"] == "cancelled", job
    assert live.client.get(accepted.headers["Location"]).json()["summary"] is None
    problem(live.client.get(f"{accepted.headers['Location']}/logits.npy"), 409, "no results yet")
    problem(live.client.post(f"{accepted.headers['Location']}/cancel"), 409, "already cancelled")


def test_another_experiments_readout_is_refused_and_now_needs_the_chip_to_hold_the_experiment(
    live: Live,
) -> None:
    """Runs last: a second experiment's programming run, started on the same station and never
    finished, is what the chip holds from then on."""
    engine = make_engine(live.url)
    with engine.begin() as conn:
        first = conn.execute(select(experiments).where(experiments.c.id == live.experiment_id)).one()
        other = add_experiment(conn, "other", network_id=first.network_id, station_id=first.station_id,
                               settings=first.settings)  # fmt: skip
        conn.execute(update(experiments).where(experiments.c.id == other).values(status="cancelled"))
        mapping = add_mapping(conn, network_id=first.network_id, station_id=first.station_id, device_map=b"-",
                              n_devices=2, utilisation=0.0, experiment_id=other)  # fmt: skip
        run = start_programming_run(conn, mapping, {}, experiment_id=other)
        foreign = add_readout(conn, run, offset_s=25.0, scheduled_s=25.0, board_time_s=25.0, g_us=[1.0, 2.0])
    engine.dispose()
    before = live.infer_jobs()
    submit = f"/experiments/{live.experiment_id}/inferences"
    problem(live.client.post(submit, json={"dataset_id": DIGITS, "at": foreign}), 422,
            f"readout {foreign} is not a readout of experiment {live.experiment_id}")  # fmt: skip
    problem(live.client.post(submit, json={"dataset_id": DIGITS, "at": "now"}), 409,
            f"experiment {other} was programmed after it")  # fmt: skip
    problem(live.client.post(f"/experiments/{other}/inferences", json={"dataset_id": DIGITS, "at": "now"}),
            409, "still being programmed")  # fmt: skip
    assert live.infer_jobs() == before


def test_a_queued_inference_wakes_the_worker_instead_of_waiting_for_its_poll(live: Live) -> None:
    polling = live.worker.options
    live.worker.options = replace(polling, poll_s=30.0)
    try:
        time.sleep(0.3)  # both lanes are now in a 30 s wait
        started = time.monotonic()
        body = {"dataset_id": DIGITS, "at": live.readout_ids[0], "methods": ["none"]}
        accepted = live.client.post(f"/experiments/{live.experiment_id}/inferences", json=body)
        assert accepted.status_code == 202, accepted.text
        job = live.wait(accepted.json()["job"]["id"], timeout_s=20.0)
        assert job["status"] == "succeeded", job["error"]
        assert time.monotonic() - started < 5.0
    finally:
        live.worker.options = polling


def test_the_dashboard_shows_data_sets_networks_and_an_inference_with_its_confusion_and_inputs(
    live: Live,
) -> None:
    body = {"dataset_id": DIGITS, "at": live.readout_ids[0], "methods": ["none"]}
    accepted = live.client.post(f"/experiments/{live.experiment_id}/inferences", json=body)
    assert live.wait(accepted.json()["job"]["id"])["status"] == "succeeded"
    inference_id = accepted.json()["inference"]["id"]
    page = live.client.get(f"/dashboard/inferences/{inference_id}")
    assert page.status_code == 200 and "Confusion matrix" in page.text
    logits = np.load(io.BytesIO(live.client.get(f"/inferences/{inference_id}/logits.npy").content))
    labels = load_digits("test").y
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="input (\d+)"', page.text)
    assert [int(i) for _, i in images] == list(range(12))
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data, _ in images)
    captions = re.findall(r"#(\d+): predicted (\d+), true (\d+)", page.text)
    assert [(int(i), int(p), int(t)) for i, p, t in captions] == [
        (i, int(logits[0, 0, i].argmax()), int(labels[i])) for i in range(12)
    ]
    listing = live.client.get(f"/dashboard/experiments/{live.experiment_id}/inferences").text
    assert f'href="/dashboard/inferences/{inference_id}"' in listing

    experiment = live.client.get(f"/experiments/{live.experiment_id}").json()
    network = live.client.get(f"/dashboard/networks/{experiment['network_id']}").text
    assert "digits-resnet" in network and "<code>conv1</code>" in network and "infer" in network
    assert "digits" in live.client.get("/dashboard/datasets").text
    assert live.client.get("/dashboard/networks").status_code == 200


def test_a_range_of_stored_readouts_re_evaluated_with_other_settings_is_a_new_series(live: Live) -> None:
    first, last = live.readout_ids[0], live.readout_ids[-1]
    body = {"series": "adc4", "first_readout_id": first, "last_readout_id": last, "dataset_id": DIGITS,
            "methods": ["none", "gdc"], "periphery": {"adc_bits": 4}}  # fmt: skip
    accepted = live.client.post(f"/experiments/{live.experiment_id}/evaluations", json=body)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["readout_ids"] == live.readout_ids
    for job_id in accepted.json()["job_ids"]:
        assert live.wait(job_id)["status"] == "succeeded"
    points = live.client.get(f"/experiments/{live.experiment_id}/accuracy-series").json()
    series = [(p["readout_id"], p["method"]) for p in points if p["series"] == "adc4"]
    assert sorted(series) == sorted((r, m) for r in live.readout_ids for m in ("none", "gdc"))
    ages = {p["readout_id"]: p["t_since_program_s"] for p in points if p["series"] == "adc4"}
    assert [ages[r] for r in live.readout_ids] == pytest.approx(OFFSETS_S, rel=0.05)
    for p in points:
        if p["series"] == "adc4":
            inference = live.client.get(f"/inferences/{p['inference_id']}").json()
            assert inference["spec"]["periphery"]["adc_bits"] == 4
            assert inference["readout_id"] == p["readout_id"]

    engine = make_engine(live.url)
    try:
        figure = analyze_experiment(engine, live.experiment_id, forecast=False).figure("accuracy")
    finally:
        engine.dispose()
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert {"none · adc4 (measured)", "GDC · adc4 (measured)"} <= set(legend)
    assert live.client.get(f"/experiments/{live.experiment_id}/plots/accuracy").status_code == 200

    jobs_before = live.infer_jobs()
    again = live.client.post(f"/experiments/{live.experiment_id}/evaluations", json=body)
    problem(again, 409, "already has a series 'adc4'")
    empty = live.client.post(f"/experiments/{live.experiment_id}/evaluations",
                             json={**body, "series": "none here", "first_readout_id": 10**6,
                                   "last_readout_id": 10**6 + 5})  # fmt: skip
    problem(empty, 422, "has no readout with an id in")
    bad = live.client.post(f"/experiments/{live.experiment_id}/evaluations", json={**body, "series": "<x>"})
    assert bad.status_code == 422
    assert live.infer_jobs() == jobs_before
