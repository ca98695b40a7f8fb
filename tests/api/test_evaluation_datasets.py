"""An experiment names its test and calibration sets by data-set id (or a built-in's name),
checked against the network at submission; and a network that does not fit the station's
chip is refused at submission. Every refusal is a 422 with nothing queued."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from hwctl.cli import main
from hwctl.experiment_spec import EvaluationSpec
from hwctl.inference.inputs import Inputs
from hwctl.nn.data import load_dataset
from hwctl.nn.evaluation import calibration_set
from hwctl.settings import Settings
from hwctl.store.datasets import DatasetError, evaluation_calibration_images, evaluation_test_images
from hwctl.store.engine import connect, make_engine
from tests.api.conftest import AUTH, assert_problem, station_body, upload

DIGITS_SHAPE = (1, 8, 8)  # what the digits ResNet takes (C×H×W)


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def images(n: int, shape: tuple[int, int, int] = DIGITS_SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)  # NCHW


def add_dataset(client: TestClient, data: bytes, **form: str) -> int:
    files = {"file": ("set.npz", io.BytesIO(data), "application/octet-stream")}
    response = client.post("/datasets", files=files, data=form, headers=AUTH)
    assert response.status_code in (200, 201), response.text
    return int(response.json()["id"])


@pytest.fixture
def ready(client: TestClient, digits_checkpoint: bytes) -> dict[str, Any]:
    client.post("/stations", json=station_body("sim"), headers=AUTH)
    network_id = upload(client, digits_checkpoint).json()["id"]
    return {"network_id": network_id, "station": "sim", "schedule": {"offsets_s": [10.0]}}


def submit(client: TestClient, body: dict[str, Any], **evaluation: Any) -> Any:
    return client.post("/experiments", json=body | {"evaluation": evaluation}, headers=AUTH)


def nothing_queued(client: TestClient) -> None:
    assert client.get("/experiments").json()["total"] == 0
    assert client.get("/jobs").json()["total"] == 0


def builtin_id(client: TestClient, builtin: str, split: str = "test") -> int:
    listed = client.get("/datasets", params={"limit": 100}).json()["items"]
    return next(d["id"] for d in listed if d["builtin"] == builtin and d["split"] == split)


# -- the test set --------------------------------------------------------------------------
def test_a_labelled_upload_is_the_test_set_and_is_stored_by_id(
    client: TestClient, ready: dict[str, Any]
) -> None:
    test_id = add_dataset(client, npz(x=images(20), y=np.arange(20) % 10))
    calibration_id = add_dataset(client, npz(x=images(30, seed=1)))  # no labels: fine to calibrate on
    accepted = submit(client, ready, test_dataset_id=test_id, calibration_dataset_id=calibration_id)
    assert accepted.status_code == 202, accepted.text
    stored = client.get(f"/experiments/{accepted.json()['experiment']['id']}").json()["spec"]["evaluation"]
    assert stored["test_dataset_id"] == test_id and stored["calibration_dataset_id"] == calibration_id
    assert stored["dataset"] is None  # not a built-in


def test_the_name_form_maps_to_the_built_ins_id(client: TestClient, ready: dict[str, Any]) -> None:
    for given in ({"dataset": "digits"}, {}):  # named, and the architecture's own
        accepted = submit(client, ready, **given)
        assert accepted.status_code == 202, accepted.text
        evaluation = accepted.json()["experiment"]["spec"]["evaluation"]
        assert evaluation["dataset"] == "digits" and evaluation["test_dataset_id"] == builtin_id(
            client, "digits"
        )
        client.post(f"/experiments/{accepted.json()['experiment']['id']}/cancel", headers=AUTH)
    by_id = submit(client, ready, test_dataset_id=builtin_id(client, "digits"))
    assert (
        by_id.json()["experiment"]["spec"]["evaluation"]["dataset"] == "digits"
    )  # its training split calibrates


def test_an_unknown_data_set_id_is_422_naming_the_field(client: TestClient, ready: dict[str, Any]) -> None:
    assert_problem(submit(client, ready, test_dataset_id=9999), 422, "evaluation.test_dataset_id",
                   "data set 9999 does not exist")  # fmt: skip
    assert_problem(
        submit(client, ready, calibration_dataset_id=9999), 422, "evaluation.calibration_dataset_id"
    )
    nothing_queued(client)


def test_a_set_whose_images_the_network_does_not_take_is_422_with_both_shapes(
    client: TestClient, ready: dict[str, Any]
) -> None:
    cifar_sized = add_dataset(client, npz(x=images(4, (3, 32, 32)), y=np.arange(4)))
    problem = assert_problem(submit(client, ready, test_dataset_id=cifar_sized), 422, "3×32×32", "1×8×8")
    assert "evaluation.test_dataset_id" in problem["detail"]
    assert_problem(submit(client, ready, calibration_dataset_id=cifar_sized), 422,
                   "evaluation.calibration_dataset_id", "3×32×32", "1×8×8")  # fmt: skip
    assert_problem(
        submit(client, ready, test_dataset_id=builtin_id(client, "cifar10")), 422, "3×32×32", "1×8×8"
    )
    nothing_queued(client)


def test_a_set_without_labels_cannot_be_the_test_set(client: TestClient, ready: dict[str, Any]) -> None:
    unlabelled = add_dataset(client, npz(x=images(8)))
    assert_problem(submit(client, ready, test_dataset_id=unlabelled), 422, "no labels", "test set")
    nothing_queued(client)


def test_labels_beyond_the_networks_outputs_are_422(client: TestClient, ready: dict[str, Any]) -> None:
    twelve_classes = add_dataset(client, npz(x=images(12), y=np.arange(12)))
    assert_problem(
        submit(client, ready, test_dataset_id=twelve_classes), 422, "labels up to 11", "10 outputs"
    )
    nothing_queued(client)


def test_the_test_set_is_named_once(client: TestClient, ready: dict[str, Any]) -> None:
    named = submit(client, ready, dataset="digits", test_dataset_id=builtin_id(client, "digits"))
    assert_problem(named, 422, "once")
    nothing_queued(client)


def test_adabs_on_an_uploaded_test_set_needs_a_calibration_set(
    client: TestClient, ready: dict[str, Any]
) -> None:
    test_id = add_dataset(client, npz(x=images(20), y=np.arange(20) % 10))
    assert_problem(submit(client, ready, test_dataset_id=test_id), 422, "calibration_dataset_id", "adabs")
    nothing_queued(client)
    without = submit(client, ready, test_dataset_id=test_id, methods=["none", "gdc"])
    assert without.status_code == 202, without.text


def test_an_inference_asking_for_calibration_images_the_experiment_lacks_is_422(
    client: TestClient, digits_checkpoint: bytes, tmp_path: Path
) -> None:
    source, archive = tmp_path / "digits.pt", tmp_path / "digits.pt2"  # a graph: no data set of its own
    source.write_bytes(digits_checkpoint)
    assert main(["export", "digits-resnet", "--checkpoint", str(source), "--out", str(archive)]) == 0
    client.post("/stations", json=station_body("sim"), headers=AUTH)
    body = {"network_id": upload(client, archive.read_bytes(), "digits.pt2").json()["id"], "station": "sim",
            "schedule": {"offsets_s": [10.0]}}  # fmt: skip
    test_id = add_dataset(client, npz(x=images(20), y=np.arange(20) % 10))
    accepted = submit(client, body, test_dataset_id=test_id, methods=["none", "gdc"])
    assert accepted.status_code == 202, accepted.text
    experiment_id = accepted.json()["experiment"]["id"]
    adabs = {"dataset_id": test_id, "at": 1, "methods": ["adabs"]}
    inference = client.post(f"/experiments/{experiment_id}/inferences", json=adabs, headers=AUTH)
    assert_problem(inference, 422, "calibration images", "evaluation.calibration_dataset_id")


# -- the network must fit the station ------------------------------------------------------
def test_a_network_too_large_for_the_station_is_422_with_devices_needed_and_available(
    client: TestClient, digits_checkpoint: bytes
) -> None:
    # 65,536 devices, more than the 37,648 the digits ResNet needs, but its 288-row layer does
    # not pack beside the rest on one 256×256 tile; kept digital, the rest fits.
    client.post("/stations", json=station_body("one-tile", geometry={"tiles": 1, "rows": 256, "cols": 256}),
                headers=AUTH)  # fmt: skip
    body = {"network_id": upload(client, digits_checkpoint).json()["id"], "station": "one-tile",
            "schedule": {"offsets_s": [10.0]}}  # fmt: skip
    problem = assert_problem(client.post("/experiments", json=body, headers=AUTH), 422,
                             "does not fit station 'one-tile'", "37,648 devices needed", "65,536",
                             "every layer analog", "mapping.digital_layers")  # fmt: skip
    assert "first_and_last" in problem["detail"]
    kept = body | {"mapping": {"digital_layers": ["conv1", "linear"]}}  # the first and last do not help
    assert_problem(client.post("/experiments", json=kept, headers=AUTH), 422, "conv1, linear kept digital")
    nothing_queued(client)
    fits = body | {"mapping": {"digital_layers": ["layer3.0.conv2"]}}
    assert client.post("/experiments", json=fits, headers=AUTH).status_code == 202


# -- one resolver for the evaluate job, the report's forecast and `hwctl evaluate` ---------
def test_the_resolver_loads_an_upload_as_stored_and_a_built_in_as_before(
    client: TestClient, settings: Settings
) -> None:
    x = images(50, seed=3)
    mean, std = np.array([0.4]), np.array([0.2])
    test_id = add_dataset(client, npz(x=x, y=np.arange(50) % 10, mean=mean, std=std))
    calibration_id = add_dataset(client, npz(x=images(40, seed=4)))
    unlabelled_id = add_dataset(client, npz(x=images(5, seed=5)))
    digits_id = builtin_id(client, "digits")
    engine = make_engine(settings.database_url)
    try:
        with connect(engine) as conn:
            uploaded = EvaluationSpec(test_dataset_id=test_id, calibration_dataset_id=calibration_id,
                                      dataset=None, n_images=20, calibration_images=25)  # fmt: skip
            test = evaluation_test_images(conn, uploaded)
            assert isinstance(test, Inputs) and len(test) == 20 and test.normalisation is not None
            assert test.normalisation.mean == (0.4,) and test.normalisation.std == (0.2,)
            assert {image.tobytes() for image in test.x} <= {image.tobytes() for image in x}  # untouched
            calibration = evaluation_calibration_images(conn, uploaded)
            assert isinstance(calibration, Inputs) and len(calibration) == 25
            whole = EvaluationSpec(
                test_dataset_id=test_id, calibration_dataset_id=calibration_id, dataset=None
            )
            calibration = evaluation_calibration_images(conn, whole)
            assert calibration is not None and np.array_equal(
                calibration.x, images(40, seed=4)
            )  # not augmented
            assert evaluation_calibration_images(conn, whole.model_copy(update={"methods": ["none"]})) is None

            by_id = EvaluationSpec(test_dataset_id=digits_id, dataset="digits", n_images=100)
            by_name = EvaluationSpec(dataset="digits", n_images=100)  # a spec stored before ids
            expected = load_dataset("digits", "test").subset(100)
            for spec in (by_id, by_name):
                got = evaluation_test_images(conn, spec)
                assert np.array_equal(got.x, expected.x) and got.y is not None
                assert np.array_equal(got.y, expected.y)
                calibrated = evaluation_calibration_images(conn, spec)
                assert calibrated is not None
                assert np.array_equal(
                    calibrated.x, calibration_set(load_dataset("digits", "train"), "digits").x
                )
            # The built-in training split by id calibrates as the name form does (augmented).
            own_calibration = by_id.model_copy(
                update={"calibration_dataset_id": builtin_id(client, "digits", "train")}
            )
            calibrated = evaluation_calibration_images(conn, own_calibration)
            assert calibrated is not None
            assert np.array_equal(calibrated.x, calibration_set(load_dataset("digits", "train"), "digits").x)
            with pytest.raises(DatasetError, match="no labels"):
                evaluation_test_images(conn, EvaluationSpec(test_dataset_id=unlabelled_id, dataset=None))
    finally:
        engine.dispose()
