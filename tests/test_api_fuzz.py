"""schemathesis against the running server's own OpenAPI document, with an admin token and
with a device certificate, valid and invalid inputs, a fixed seed and a bounded number of
cases: no answer is a server error, and every answer is one the document declares (status,
content type, body schema)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from edgefleet.credentials import Role
from tests.conftest import Device, Fleet, start_fleet

CASES_PER_OPERATION = int(os.environ.get("EDGEFLEET_API_FUZZ_CASES", "25"))  # per generation mode
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Device]]:
    fleet = start_fleet(tmp_path_factory.mktemp("api-fuzz"), None)
    yield fleet, fleet.enroll()
    fleet.close()


def _session(fleet: Fleet, device: Device, kind: str) -> tuple[requests.Session, dict[str, Any]]:
    session = requests.Session()
    options: dict[str, Any] = {"verify": str(fleet.settings.pki.ca_cert)}
    if kind == "admin":
        session.headers["authorization"] = f"Bearer {fleet.tokens[Role.ADMIN]}"
    else:
        options["cert"] = (str(device.directory / "cert.pem"), str(device.directory / "key.pem"))
    return session, options


@pytest.mark.parametrize("kind", ["admin", "device"])
def test_no_generated_request_gets_a_server_error_or_an_answer_the_document_does_not_declare(
        plane: tuple[Fleet, Device], kind: str) -> None:
    fleet, device = plane
    schema = schemathesis.openapi.from_dict(fleet.client().get("/openapi.json").json())
    session, options = _session(fleet, device, kind)
    failures: list[str] = []
    cases = 0

    def fuzz(operation: Any, mode: GenerationMode) -> None:
        @settings(max_examples=CASES_PER_OPERATION, derandomize=True, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            nonlocal cases
            if kind == "device" and "device_id" in (case.path_parameters or {}):
                case.path_parameters["device_id"] = device.id  # its own records, past the identity check
            cases += 1
            response = case.call(base_url=fleet.url, session=session, timeout=30, **options)
            try:
                case.validate_response(response, checks=CHECKS)
            except BaseException as exc:  # schemathesis raises a group of failures
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): "
                                f"{response.status_code} {str(exc)[:400]}")

        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing in this operation can be made invalid

    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in GenerationMode:
            fuzz(operation, mode)
    print(f"schemathesis ({kind}): {cases} cases over {len(operations)} operations, {len(failures)} failures")
    assert cases > 10 * len(operations)
    assert failures == [], "\n".join(failures)
