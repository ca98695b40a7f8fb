"""Bring your own network, as a `.pt2` graph (`hwctl export`): uploaded over the real API,
read as data, programmed, read back, evaluated (none, GDC, AdaBS) and run by inference
jobs, computing what the native network computes from the same readout."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hwctl.cli import main
from hwctl.inference.inputs import Inputs
from hwctl.inference.run import ChipNetwork, InferenceSettings
from hwctl.nn.conductance import export_layers
from hwctl.nn.data import load_digits
from hwctl.nn.models import load_checkpoint
from hwctl.store import readouts as store_readouts
from hwctl.store.engine import make_engine
from hwctl.store.networks import analog_layers_of, fit_on_station, load_network
from hwctl.vocabulary import CompensationMethod
from tests.inference.conftest import OFFSETS_S, Live, digits_checkpoint, live_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
METHODS = ["none", "gdc", "adabs"]


def exported(tmp_path: Path, model: str, checkpoint: bytes) -> bytes:
    source, archive = tmp_path / f"{model}.pt", tmp_path / f"{model}.pt2"
    source.write_bytes(checkpoint)
    assert main(["export", model, "--checkpoint", str(source), "--out", str(archive)]) == 0
    return archive.read_bytes()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("export")
    network = ("digits.pt2", exported(tmp, "digits-resnet", digits_checkpoint()))
    evaluation = {"methods": METHODS}
    with live_service(request.param, tmp, network, evaluation, architecture="digits-resnet") as service:
        yield service


def test_an_uploaded_graph_is_evaluated_after_every_readout_with_each_method(live: Live) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = live.client.get("/evaluations", params={"experiment_id": live.experiment_id}).json()["items"]
        if len(rows) == len(OFFSETS_S) * len(METHODS):
            break
        time.sleep(0.1)
    assert sorted((r["readout_id"], r["method"]) for r in rows) == sorted(
        (readout_id, method) for readout_id in live.readout_ids for method in METHODS
    )
    assert all(0.0 <= r["accuracy"] <= 100.0 and r["n_images"] == 449 for r in rows), rows


def test_an_inference_on_the_graph_gives_what_the_native_network_gives_from_the_same_readout(
    live: Live,
) -> None:
    readout_id = live.readout_ids[-1]
    body = {"dataset_id": 1, "at": readout_id, "methods": ["none", "gdc"]}
    accepted = live.client.post(f"/experiments/{live.experiment_id}/inferences", json=body)
    assert accepted.status_code == 202, accepted.text
    job = live.wait(accepted.json()["job"]["id"])
    assert job["status"] == "succeeded", job["error"]
    location = accepted.headers["Location"]
    logits = np.load(io.BytesIO(live.client.get(f"{location}/logits.npy").content))
    accuracy = [r["accuracy_pct"] for r in live.client.get(location).json()["summary"]["results"]]

    engine = make_engine(live.url)
    try:
        with engine.connect() as conn:
            readout = store_readouts.load_readout(conn, readout_id)
            t0 = store_readouts.load_readout(conn, live.readout_ids[0])
            device_map = store_readouts.load_run_device_map(conn, readout.run_id)
    finally:
        engine.dispose()
    native = ChipNetwork(load_checkpoint(digits_checkpoint()), device_map)
    test = load_digits("test")
    settings = InferenceSettings(methods=(CompensationMethod.NONE, CompensationMethod.GDC))
    outcomes = native.infer(Inputs.from_image_set(test), readout.g_us, settings, t0.g_us)
    for k, outcome in enumerate(outcomes):
        np.testing.assert_allclose(logits[k, 0], outcome.logits, rtol=1e-4, atol=1e-4)
        assert accuracy[k] == pytest.approx(outcome.scores(test.y).accuracy_pct, abs=0.01)
    listing = live.client.get("/evaluations", params={"experiment_id": live.experiment_id})
    evaluations = listing.json()["items"]
    [evaluated] = [r for r in evaluations if r["readout_id"] == readout_id and r["method"] == "none"]
    assert evaluated["accuracy"] == pytest.approx(accuracy[0], abs=0.01)  # the evaluation job agrees


def test_a_graph_named_as_an_architecture_must_be_it_unnamed_it_is_its_own(
    live: Live, tmp_path: Path
) -> None:
    digits = exported(tmp_path, "digits-resnet", digits_checkpoint())
    files = {"file": ("net.pt2", io.BytesIO(digits), "application/octet-stream")}
    unnamed = live.client.post("/networks", files=files)
    assert unnamed.status_code == 201 and unnamed.json()["architecture"] == "exported", unnamed.text
    files = {"file": ("net.pt2", io.BytesIO(digits), "application/octet-stream")}
    other = live.client.post("/networks", files=files, data={"architecture": "resnet20"})
    assert other.status_code == 422 and "not a resnet20" in other.json()["detail"]


def test_the_upload_answers_input_shape_analog_layers_devices_and_which_stations_it_fits(
    live: Live, tmp_path: Path
) -> None:
    tiny = {"tiles": 1, "rows": 64, "cols": 64}
    station = {"name": "tiny", "resource": "TCPIP::tiny::5025::SOCKET", "chip_serial": "SIM-TINY",
               "geometry": tiny}  # fmt: skip
    live.client.post("/stations", json=station).raise_for_status()
    files = {"file": ("again.pt2", io.BytesIO(exported(tmp_path, "digits-resnet", digits_checkpoint())), "")}
    uploaded = live.client.post("/networks", files=files, data={"architecture": "digits-resnet"})
    assert uploaded.status_code == 201, uploaded.text
    body = uploaded.json()
    native = export_layers(load_checkpoint(digits_checkpoint()).build())
    assert body["input_shape"] == [1, 8, 8]
    assert [(layer["name"], tuple(layer["shape"])) for layer in body["analog_layers"]] == [
        (w.name, w.matrix.shape) for w in native
    ]
    assert body["devices"] == 2 * body["analog_weights"] == 2 * sum(w.matrix.size for w in native)
    fits = {f["station"]: f for f in body["stations"]}
    assert fits["infer"]["fits"] and fits["infer"]["reason"] is None
    assert not fits["tiny"]["fits"] and fits["tiny"]["devices"] == 64 * 64
    assert f"{body['devices']:,} devices needed, the chip has 4,096" in fits["tiny"]["reason"]


def test_the_fit_an_experiment_submission_checks_counts_only_the_analog_layers(live: Live) -> None:
    station = {"name": "small", "resource": "TCPIP::small::5025::SOCKET", "chip_serial": "SIM-SMALL",
               "geometry": {"tiles": 1, "rows": 64, "cols": 64}}  # fmt: skip
    live.client.post("/stations", json=station).raise_for_status()
    network_id = live.client.get(f"/experiments/{live.experiment_id}").json()["network_id"]
    engine = make_engine(live.url)
    try:
        with engine.connect() as conn:
            names = [layer.name for layer in analog_layers_of(load_network(conn, network_id))]
            assert fit_on_station(conn, network_id, "infer").fits
            whole = fit_on_station(conn, network_id, "small")
            assert not whole.fits and whole.reason is not None and "devices needed" in whole.reason
            assert fit_on_station(conn, network_id, "small", digital_layers=names[1:]).fits  # the stem alone
    finally:
        engine.dispose()
