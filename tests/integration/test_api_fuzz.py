"""Schemathesis against the running API's ``/openapi.json``: no 5xx, every answer as documented.

Each operation gets a bounded number of generated requests (valid and invalid ones) sent
with a valid API key; every response must have a documented status code, content type
and body schema (errors included, in the ``{"error": ...}`` shape), and none may be a 5xx.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from support.stack import Api, make_stack

pytestmark = pytest.mark.integration

#: Generated requests per operation: enough to reach each route's error paths, and the
#: whole run stays around a minute on a small machine.
EXAMPLES_PER_OPERATION = 50
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, str]]:
    """An API of its own (no workers: submitted jobs just wait) and a tenant's key."""
    with make_stack(tmp_path_factory.mktemp("fuzz")) as own:
        yield own.start_api(), own.create_key("fuzz")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_answers_as_documented(
    fuzzed_api: tuple[Api, str], mode: GenerationMode
) -> None:
    api, key = fuzzed_api
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: Case) -> None:
            case.call_and_validate(
                base_url=api.url,
                headers={"Authorization": f"Bearer {key}"},
                checks=CHECKS,
                timeout=10,
            )

        try:
            call()
        except Unsatisfiable:
            # Nothing to make invalid: an operation without parameters or a body.
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    assert operations >= 17
    assert not failures, "\n\n".join(failures)


def test_every_v1_error_is_documented_with_the_error_model(fuzzed_api: tuple[Api, str]) -> None:
    api, _key = fuzzed_api
    document = httpx.get(f"{api.url}/openapi.json").json()
    error_ref = "#/components/schemas/ErrorResponse"
    operations = [
        (method, path, operation)
        for path, item in document["paths"].items()
        if path.startswith("/v1/")
        for method, operation in item.items()
    ]
    assert len(operations) >= 15
    for method, path, operation in operations:
        responses = operation["responses"]
        errors = {code for code in responses if code.startswith(("4", "5"))}
        assert {"401", "422", "429"} <= errors, f"{method} {path}"
        for code in errors:
            schema_ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
            assert schema_ref == error_ref, f"{method} {path} {code}"
        if "{" in path:
            assert "404" in errors, f"{method} {path}"
        if "requestBody" in operation:
            assert {"400", "413"} <= errors, f"{method} {path}"
