"""Every limit on a submission is checked before anything is queued, by a 422 that states
the limit; any JSON at all gets a 2xx or a 4xx, never a 5xx."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import insert

from hwctl.experiment_spec import ExperimentRequest
from hwctl.store.engine import make_engine
from hwctl.store.schema import jobs
from tests.api.conftest import AUTH, assert_problem, station_body, upload

YEAR_S = 365.25 * 86_400


@pytest.fixture
def ready(client: TestClient, digits_checkpoint: bytes) -> dict[str, Any]:
    """A real-clock station with a 400 µA pulse limit, a virtual one, and a network."""
    client.post("/stations", json=station_body("bench-1", amplitude_limit_ua=400.0), headers=AUTH)
    client.post("/stations", json=station_body("sim-1", clock_kind="virtual"), headers=AUTH)
    return {"network_id": upload(client, digits_checkpoint).json()["id"], "station": "bench-1"}


def submit(client: TestClient, spec: dict[str, Any]) -> Any:
    return client.post("/experiments", json=spec, headers=AUTH)


def _nothing_queued(client: TestClient) -> None:
    assert client.get("/experiments").json()["total"] == 0
    assert client.get("/jobs").json()["total"] == 0


REFUSED = {
    "a readback too many": (
        {"schedule": {"offsets_s": [25.0 + 2 * i for i in range(1001)]}}, ["1001 readbacks", "at most 1000"],
    ),
    "readbacks closer than the minimum spacing": (
        {"schedule": {"offsets_s": [25, 25.5, 100]}}, ["25.0 s and 25.5 s", "minimum spacing of 1.0 s"],
    ),
    "a century of drift": ({"schedule": {"offsets_s": [25, 100 * YEAR_S]}}, ["longest schedule accepted"]),
    "two years on a real clock": (
        {"schedule": {"offsets_s": [25, 2 * YEAR_S]}}, ["longest schedule on a real clock", "365 d"],
    ),
    "pulses beyond the station's limit": (
        {"program": {"amplitude_max_ua": 450}}, ["450.0 µA", "amplitude limit of 400.0 µA"],
    ),
    "a minimum amplitude above the maximum": (
        {"program": {"amplitude_min_ua": 120, "amplitude_max_ua": 80}},
        ["(120.0 µA) must be below", "(80.0 µA)"],
    ),
    "a maximum amplitude below the default minimum": (
        {"program": {"amplitude_max_ua": 40}}, ["(50.0 µA) must be below", "(40.0 µA)"],
    ),
    "an amplitude no station may have": (
        {"program": {"amplitude_max_ua": 5000}}, ["less than or equal to 1000"],
    ),
    "no compensation method": ({"evaluation": {"methods": []}}, ["at least one of none, gdc, adabs"]),
    "a method twice": ({"evaluation": {"methods": ["gdc", "gdc"]}}, ["each method at most once"]),
    "a g_max of zero": ({"g_max_us": 0}, ["g_max_us", "greater than 0"]),
    "a g_max beyond the devices": ({"g_max_us": 1000}, ["g_max_us", "less than or equal to 100"]),
    "a long name": ({"name": "n" * 129}, ["name", "at most 128 characters"]),
    "an empty name": ({"name": ""}, ["name", "at least 1 character"]),
    "a long station name": ({"station": "s" * 65}, ["station", "at most 64 characters"]),
    "a billion test images": ({"evaluation": {"n_images": 10**9}}, ["at most 100000 images"]),
    "a layer kept digital that the network does not have": (
        {"mapping": {"digital_layers": ["conv1", "fc"]}},
        ["no layer named fc to keep digital", "layers: conv1, layer1.0.conv1, ", "layer3.0.conv2, linear"],
    ),
    "every layer kept digital": (
        {"mapping": {"digital_layers": ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1",
                                        "layer2.0.conv2", "layer3.0.conv1", "layer3.0.conv2", "linear"]}},
        ["no layers to map (every layer is kept digital)"],
    ),
    "a layer kept digital twice": (
        {"mapping": {"digital_layers": ["conv1", "conv1"]}}, ["each layer at most once"],
    ),
    "an unknown mapping choice": ({"mapping": {"digital_layers": "middle"}}, ["digital_layers"]),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_submission_beyond_a_limit_is_422_stating_it_and_queues_nothing(
    client: TestClient, ready: dict[str, Any], case: str
) -> None:
    change, phrases = REFUSED[case]
    assert_problem(submit(client, ready | change), 422, *phrases)
    _nothing_queued(client)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["g_max_us", "program.amplitude_max_ua", "schedule.offsets_s"])
def test_non_finite_numbers_are_422_wherever_they_appear(
    client: TestClient, ready: dict[str, Any], field: str, literal: str
) -> None:
    """Python's JSON parser reads NaN and Infinity literals; no spec may hold them."""
    placeholder = 123456789.0
    spec: dict[str, Any] = dict(ready)
    if field == "g_max_us":
        spec["g_max_us"] = placeholder
    elif field == "program.amplitude_max_ua":
        spec["program"] = {"amplitude_max_ua": placeholder}
    else:
        spec["schedule"] = {"offsets_s": [25.0, placeholder]}
    body = json.dumps(spec).replace(str(placeholder), literal)
    response = client.post("/experiments", content=body, headers=AUTH | {"Content-Type": "application/json"})
    assert_problem(response, 422, field.split(".")[-1])
    _nothing_queued(client)


def test_a_megabyte_name_is_refused_before_it_is_parsed(client: TestClient, ready: dict[str, Any]) -> None:
    assert_problem(submit(client, ready | {"name": "n" * (1 << 20)}), 413, "at most 1048576 bytes")
    _nothing_queued(client)


@pytest.mark.parametrize("digital_layers", ["first_and_last", ["conv1", "linear"], []])
def test_layers_kept_digital_by_name_or_as_first_and_last_are_accepted_and_stored(
    client: TestClient, ready: dict[str, Any], digital_layers: Any
) -> None:
    response = submit(client, ready | {"mapping": {"digital_layers": digital_layers}})
    assert response.status_code == 202, response.text
    experiment = client.get(f"/experiments/{response.json()['experiment']['id']}").json()
    assert experiment["spec"]["mapping"] == {"digital_layers": digital_layers}


def test_a_virtual_clock_may_run_a_schedule_of_years(client: TestClient, ready: dict[str, Any]) -> None:
    response = submit(client, ready | {"station": "sim-1", "schedule": {"offsets_s": [25, 5 * YEAR_S]}})
    assert response.status_code == 202, response.text


def test_a_default_amplitude_beyond_a_low_station_limit_says_so(
    client: TestClient, ready: dict[str, Any]
) -> None:
    client.post("/stations", json=station_body("weak", amplitude_limit_ua=100.0), headers=AUTH)
    response = submit(client, ready | {"station": "weak"})
    phrases = ("160.0 µA (the default)", "limit of 100.0 µA", "lower program.amplitude_max_ua")
    assert_problem(response, 422, *phrases)


def test_cancel_of_an_experiment_with_a_full_schedule_queued_is_answered(
    client: TestClient, ready: dict[str, Any], db_url: str
) -> None:
    """The most readbacks a submission may ask for, all queued: cancel answers, never a 5xx."""
    accepted = submit(client, ready).json()
    experiment_id, station_id = accepted["experiment"]["id"], accepted["program_job"]["station_id"]
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(insert(jobs), [
            {"kind": "readback", "station_id": station_id, "experiment_id": experiment_id,
             "run_at_s": 25.0 + i, "payload": {"experiment_id": experiment_id, "offset_s": 25.0 + i}}
            for i in range(1000)
        ])  # fmt: skip
    engine.dispose()
    one_job = client.get("/jobs", params={"kind": "readback", "limit": 1}).json()["items"][0]["id"]
    assert client.post(f"/jobs/{one_job}/cancel", headers=AUTH).status_code == 200
    response = client.post(f"/experiments/{experiment_id}/cancel", headers=AUTH)
    assert response.status_code == 200, response.text
    assert client.get("/jobs", params={"status": "cancelled"}).json()["total"] == 1001


# -- fuzzing ----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["network_id", "station", "name", "g_max_us", "program", "schedule", "evaluation",
          "tolerance_us", "amplitude_min_ua", "amplitude_max_ua", "max_iterations", "offsets_s",
          "methods", "n_images", "calibration_images", "enabled", "dataset"]  # fmt: skip


@st.composite
def near_valid_specs(draw: st.DrawFn) -> Any:
    """A valid spec with some fields, at any depth, replaced by arbitrary JSON: the shapes that
    reach the deeper checks."""
    spec: dict[str, Any] = {
        "network_id": 1, "station": "bench-1", "g_max_us": 25.0,
        "program": {"tolerance_us": 0.3, "amplitude_min_ua": 50.0, "amplitude_max_ua": 150.0},
        "schedule": {"offsets_s": [25.0, 250.0]}, "evaluation": {"methods": ["gdc"], "n_images": 10},
    }  # fmt: skip
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from([None, "program", "schedule", "evaluation"]))
        section = spec if where is None else spec[where]
        if isinstance(section, dict):  # a section may itself have been replaced
            section[draw(st.sampled_from(FIELDS))] = draw(JSON)
    return spec


def test_spec_validation_of_any_json_is_a_model_or_a_validation_error() -> None:
    @given(body=JSON | near_valid_specs())
    @settings(max_examples=400, deadline=None, derandomize=True)
    def validate(body: Any) -> None:
        try:
            spec = ExperimentRequest.model_validate(body)
        except ValidationError:
            return
        assert all(math.isfinite(x) for x in spec.schedule.offsets_s)

    validate()


def test_any_json_submitted_is_answered_2xx_or_4xx(client: TestClient, ready: dict[str, Any]) -> None:
    @given(body=JSON | near_valid_specs())
    @settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def post(body: Any) -> None:
        response = client.post(
            "/experiments", content=json.dumps(body), headers=AUTH | {"Content-Type": "application/json"}
        )
        assert response.status_code < 500, response.text
        if response.status_code == 202:  # free the station for the next example
            experiment_id = response.json()["experiment"]["id"]
            assert client.post(f"/experiments/{experiment_id}/cancel", headers=AUTH).status_code == 200

    post()
