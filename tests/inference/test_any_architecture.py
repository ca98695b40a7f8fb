"""Any architecture through the API: a `.pt2` uploaded without naming a registered
architecture is its own (input shape, classes, analog layers and batch norm from the graph),
is programmed on the simulated chip, read back, evaluated on the data set its experiment
names, and runs inference jobs — an MLP, a CNN without batch norm, a CNN with a grouped conv."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from hwctl.experiment_spec import ExperimentRequest
from hwctl.inference.inputs import Inputs
from hwctl.inference.run import ChipNetwork, InferenceSettings
from hwctl.nn.conductance import analog_modules
from hwctl.nn.data import load_digits
from hwctl.nn.models import load_checkpoint
from hwctl.store import readouts as store_readouts
from hwctl.store.engine import make_engine
from hwctl.vocabulary import CompensationMethod
from tests.inference.conftest import OFFSETS_S, Live, live_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
METHODS = ["none", "gdc"]


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))  # fmt: skip


def _grouped_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, groups=4),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))  # fmt: skip


NETWORKS: dict[str, Callable[[], nn.Module]] = {"mlp": _mlp, "cnn": _cnn, "grouped-cnn": _grouped_cnn}


def trained(build: Callable[[], nn.Module]) -> nn.Module:
    """Trained on the digits training set as the service feeds images: [0, 1], NCHW."""
    torch.manual_seed(0)
    model = build()
    train = load_digits("train")
    x = torch.from_numpy(train.x).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(train.y)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()


def archive(model: nn.Module) -> bytes:
    """torch.export with a dynamic batch, saved as the user would."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


@dataclass
class Uploaded:
    live: Live
    model: nn.Module
    pt2: bytes

    @property
    def network_id(self) -> int:
        return int(self.live.client.get(f"/experiments/{self.live.experiment_id}").json()["network_id"])


@pytest.fixture(scope="module", params=[("mlp", "sqlite"), ("mlp", "postgresql"), ("cnn", "sqlite"),
                                        ("grouped-cnn", "sqlite")], ids="-".join)  # fmt: skip
def uploaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Uploaded]:
    name, database = request.param
    model = trained(NETWORKS[name])
    pt2 = archive(model)
    evaluation = {"dataset": "digits", "methods": METHODS}
    with live_service(database, tmp_path_factory.mktemp(name), (f"{name}.pt2", pt2), evaluation) as live:
        yield Uploaded(live, model, pt2)


def _evaluations(live: Live) -> list[dict[str, object]]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = live.client.get("/evaluations", params={"experiment_id": live.experiment_id}).json()["items"]
        if len(rows) == len(OFFSETS_S) * len(METHODS):
            return list(rows)
        time.sleep(0.1)
    raise AssertionError(f"evaluations missing: {rows}")


def test_the_graph_is_its_own_architecture_with_its_input_shape_and_layers(uploaded: Uploaded) -> None:
    body = uploaded.live.client.get(f"/networks/{uploaded.network_id}").json()
    assert body["architecture"] == "exported"
    assert body["input_shape"] == [1, 8, 8]
    assert [layer["name"] for layer in body["analog_layers"]] == list(analog_modules(uploaded.model))
    weights = sum(m.weight.numel() for m in analog_modules(uploaded.model).values())
    assert body["analog_weights"] == weights and body["devices"] == 2 * weights


def test_it_is_programmed_read_back_and_evaluated_after_every_readout(uploaded: Uploaded) -> None:
    rows = _evaluations(uploaded.live)
    assert sorted((r["readout_id"], r["method"]) for r in rows) == sorted(
        (readout_id, method) for readout_id in uploaded.live.readout_ids for method in METHODS
    )
    first = [r for r in rows if r["readout_id"] == uploaded.live.readout_ids[0]]
    assert all(float(r["accuracy"]) > 60.0 and r["n_images"] == 449 for r in first), rows  # type: ignore[arg-type]


def test_an_inference_job_gives_what_the_graph_gives_from_the_readout(uploaded: Uploaded) -> None:
    live = uploaded.live
    readout_id = live.readout_ids[-1]
    accepted = live.client.post(f"/experiments/{live.experiment_id}/inferences",
                                json={"dataset_id": 1, "at": readout_id, "methods": METHODS})  # fmt: skip
    assert accepted.status_code == 202, accepted.text
    job = live.wait(accepted.json()["job"]["id"])
    assert job["status"] == "succeeded", job["error"]
    location = accepted.headers["Location"]
    logits = np.load(io.BytesIO(live.client.get(f"{location}/logits.npy").content))
    engine = make_engine(live.url)
    try:
        with engine.connect() as conn:
            readout = store_readouts.load_readout(conn, readout_id)
            t0 = store_readouts.load_readout(conn, live.readout_ids[0])
            device_map = store_readouts.load_run_device_map(conn, readout.run_id)
    finally:
        engine.dispose()
    local = ChipNetwork(load_checkpoint(uploaded.pt2), device_map)
    settings = InferenceSettings(methods=(CompensationMethod.NONE, CompensationMethod.GDC))
    outcomes = local.infer(Inputs.from_image_set(load_digits("test")), readout.g_us, settings, t0.g_us)
    for k, outcome in enumerate(outcomes):
        np.testing.assert_allclose(logits[k, 0], outcome.logits, rtol=1e-4, atol=1e-4)
    [evaluated] = [r for r in _evaluations(live) if r["readout_id"] == readout_id and r["method"] == "none"]
    summary = live.client.get(location).json()["summary"]["results"]
    assert summary[0]["accuracy_pct"] == pytest.approx(evaluated["accuracy"], abs=0.01)


def test_adabs_on_a_graph_without_batch_norm_is_refused_before_anything_is_queued(uploaded: Uploaded) -> None:
    live = uploaded.live
    body = {"network_id": uploaded.network_id, "station": "infer", "schedule": {"offsets_s": [10.0]},
            "evaluation": {"dataset": "digits", "methods": ["none", "adabs"]}}  # fmt: skip
    refused = live.client.post("/experiments", json=body)
    assert refused.status_code == 422 and "no batch norm" in refused.json()["detail"], refused.text
    jobs_before = live.infer_jobs()
    adabs = {"dataset_id": 1, "at": live.readout_ids[0], "methods": ["adabs"]}
    inference = live.client.post(f"/experiments/{live.experiment_id}/inferences", json=adabs)
    assert inference.status_code == 422 and "no batch norm" in inference.json()["detail"], inference.text
    assert live.infer_jobs() == jobs_before


def test_a_graph_has_no_data_set_of_its_own_and_the_one_named_must_fit_it(uploaded: Uploaded) -> None:
    live = uploaded.live
    body = {"network_id": uploaded.network_id, "station": "infer", "schedule": {"offsets_s": [10.0]}}
    unnamed = live.client.post("/experiments", json=body)
    assert unnamed.status_code == 422 and "give evaluation.dataset" in unnamed.json()["detail"], unnamed.text
    cifar = live.client.post("/experiments", json=body | {"evaluation": {"dataset": "cifar10"}})
    assert cifar.status_code == 422, cifar.text
    assert "3×32×32" in cifar.json()["detail"] and "takes 1×8×8" in cifar.json()["detail"]


def test_the_default_methods_leave_adabs_out_on_a_network_without_batch_norm() -> None:
    request = ExperimentRequest.model_validate({"network_id": 1, "station": "infer", "evaluation": {}})
    assert CompensationMethod.ADABS not in request.resolved("digits", batchnorm=False).evaluation.methods
    assert request.resolved("digits").evaluation.methods == list(CompensationMethod)
    asked = ExperimentRequest.model_validate(
        {"network_id": 1, "station": "infer", "evaluation": {"methods": ["adabs"]}}
    )
    assert asked.resolved("digits", batchnorm=False).evaluation.methods == [CompensationMethod.ADABS]


def test_a_graph_that_does_not_take_images_is_refused_at_upload(uploaded: Uploaded) -> None:
    flat = nn.Sequential(nn.Linear(64, 10)).eval()
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(flat, (torch.zeros(2, 64),)), buffer)
    files = {"file": ("flat.pt2", io.BytesIO(buffer.getvalue()), "application/octet-stream")}
    refused = uploaded.live.client.post("/networks", files=files)
    assert refused.status_code == 422 and "2×64" in refused.json()["detail"], refused.text
    assert "N×C×H×W" in refused.json()["detail"]
