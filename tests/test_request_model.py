"""Request bodies: a JSON true/false is never read as a number (pydantic's lax mode reads it as 1/0)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from api.schemas.datasets import NormalisationModel
from api.schemas.stations import StationCreate
from hwctl.experiment_spec import ExperimentRequest
from hwctl.inference.spec import InferenceSpec, ReevaluationSpec

STATION = {"name": "bench-1", "resource": "sim://", "chip_serial": "PCM-42",
           "geometry": {"tiles": 1, "rows": 8, "cols": 8}}  # fmt: skip
REEVALUATION = {"series": "adc6", "first_readout_id": 1, "last_readout_id": 3, "dataset_id": 1}


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (InferenceSpec, {"dataset_id": 1, "at": True}),
        (InferenceSpec, {"dataset_id": True, "at": 3}),
        (InferenceSpec, {"dataset_id": 1, "at": 3, "periphery": {"adc_bits": True}}),
        (InferenceSpec, {"dataset_id": 1, "at": 3, "periphery": {"output_noise_rel": False}}),
        (ReevaluationSpec, REEVALUATION | {"last_readout_id": True}),
        (ExperimentRequest, {"network_id": True, "station": "bench-1"}),
        (ExperimentRequest, {"network_id": 1, "station": "bench-1", "g_max_us": True}),
        (ExperimentRequest, {"network_id": 1, "station": "bench-1", "schedule": {"offsets_s": [25, True]}}),
        (ExperimentRequest, {"network_id": 1, "station": "bench-1", "program": {"max_iterations": True}}),
        (ExperimentRequest, {"network_id": 1, "station": "bench-1", "evaluation": {"n_images": True}}),
        (StationCreate, STATION | {"geometry": {"tiles": True, "rows": 8, "cols": 8}}),
        (StationCreate, STATION | {"amplitude_limit_ua": True}),
        (NormalisationModel, {"mean": [0.5], "std": [True]}),
    ],
)
def test_a_boolean_where_a_number_is_asked_is_refused(model: type[BaseModel], body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="true/false is not a value of this field"):
        model.model_validate(body)


def test_the_same_bodies_with_numbers_are_accepted_and_booleans_stay_where_they_belong() -> None:
    assert InferenceSpec.model_validate({"dataset_id": 1, "at": 3}).at == 3
    assert InferenceSpec.model_validate({"dataset_id": 1, "at": "now"}).at == "now"
    assert ReevaluationSpec.model_validate(REEVALUATION).last_readout_id == 3
    request = ExperimentRequest.model_validate(
        {"network_id": 1, "station": "bench-1", "schedule": {"offsets_s": [25, 250]},
         "evaluation": {"enabled": False}}
    )  # fmt: skip
    assert request.schedule.offsets_s == [25.0, 250.0] and request.evaluation.enabled is False
    assert StationCreate.model_validate(STATION).geometry.tiles == 1
