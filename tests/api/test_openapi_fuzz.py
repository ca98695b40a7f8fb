"""Property-based fuzzing of every operation from the OpenAPI document: never a 5xx.

Bounded (a few examples per operation, seconds in all) so it runs in the normal suite;
every response must also match the status codes and bodies the document declares.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from api.app import create_app
from hwctl.settings import Settings
from tests.api.conftest import AUTH, station_body, upload

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def api_schema(settings: Settings, digits_checkpoint: bytes) -> Iterator[OpenApiSchema]:
    """The live schema of an app holding one station and one network, so lookups can succeed."""
    app = create_app(settings)
    with TestClient(app) as client:
        client.post("/stations", json=station_body("bench-1"), headers=AUTH)
        upload(client, digits_checkpoint)
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


CHECKS = [not_a_server_error, content_type_conformance, status_code_conformance, response_schema_conformance]


def test_no_operation_fails_with_a_server_error(api_schema: OpenApiSchema) -> None:
    results = list(api_schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), "the OpenAPI document has invalid operations"
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) >= 15
    # An event stream of a live job is endless by design; test_experiments_jobs covers it.
    operations = [op for op in operations if not op.path.endswith("/events")]

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=AUTH, checks=CHECKS)

        fuzz()
