"""schemathesis over every route of the served OpenAPI document, signed in as an operator.

Every answer must be one the document declares for that operation (status, content type and body
schema), and none may be a server error. The Durable runner is created but never started: runs the
API starts are accepted and stored, never executed, so the fuzzing stays fast and touches nothing
outside Azurite. Bounded and derandomized, so CI sees the same cases every time.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import function_app
from local.clock import VirtualClock
from local.durable import DurableRunner
from local.functions_host import FunctionsHost
from shared.principal import PRINCIPAL_HEADER, Role, encode_principal
from tests.unit.test_deployment_definition import windows

OPERATOR = {PRINCIPAL_HEADER: encode_principal("fuzz", [Role.OPERATOR])}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Cases per operation and mode (valid, invalid): 21 operations, the whole test well under a minute.
EXAMPLES = 25


@pytest.fixture
def served(app_settings, monkeypatch) -> Iterator[str]:
    monkeypatch.setenv("LOCAL_AUTHENTICATION_STANDIN", "True")  # the local host is the sign-in front
    runner = DurableRunner(function_app.app, VirtualClock(), task_hub="TestHub")  # never started
    host = FunctionsHost(function_app.app, runner.client_binding_json)
    existing = _category_names(host)
    try:
        yield host.serve()
    finally:
        # Categories are fleet-wide and place every machine of the shared Azurite: the ones the fuzzing
        # created ("00" matching every machine, say) would place other tests' machines.
        for name in _category_names(host) - existing:
            host.request("DELETE", f"/api/categories/{quote(name, safe='')}", headers=_OPERATOR)
        host.stop()
        runner.stop()


_OPERATOR = {PRINCIPAL_HEADER: encode_principal("fuzz-cleanup", [Role.OPERATOR])}


def _category_names(host: FunctionsHost) -> set[str]:
    answer = host.request("GET", "/api/categories", headers=_OPERATOR)
    if answer.status_code != 200:
        return set()
    return {c["name"] for c in json.loads(answer.get_body())["categories"]}


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def test_the_document_describes_every_route_and_method_the_app_serves(served):
    document = requests.get(f"{served}/api/openapi.json", timeout=10).json()
    host = FunctionsHost(function_app.app)
    served_operations = {(method, f"/api/{entry.route}") for entry in host.functions.values()
                         if entry.trigger == "httpTrigger" for method in entry.methods}
    assert _operations(document) == served_operations


def test_valid_requests_get_their_documented_answers(served):
    """What random data rarely reaches: a deployment created, read, listed, edited, run and deleted."""
    schema = schemathesis.openapi.from_dict(requests.get(f"{served}/api/openapi.json", timeout=10).json())
    definition = {**windows(), "name": f"fuzz-{uuid.uuid4().hex[:8]}"}
    name = {"name": definition["name"]}
    steps = [
        ("POST", "/api/deployments", {"body": definition}, 201),
        ("GET", "/api/deployments/{name}", {"path_parameters": name}, 200),
        ("GET", "/api/deployments", {}, 200),
        ("PUT", "/api/deployments/{name}", {"path_parameters": name, "body": definition}, 200),
        ("POST", "/api/deployments/{name}/runs", {"path_parameters": name}, 202),
        ("GET", "/api/deployments/{name}/runs", {"path_parameters": name, "query": {"top": 5}}, 200),
        ("POST", "/api/assessments", {"body": {"all": True}}, 202),
        ("POST", "/api/discoveries", {"body": {}}, 202),
        ("DELETE", "/api/deployments/{name}", {"path_parameters": name}, 204),
    ]
    for method, path, data, status in steps:
        case = schema[path][method].Case(**data)
        response = case.call(base_url=served, headers=OPERATOR, timeout=30)
        assert response.status_code == status, (method, path, response.text)
        case.validate_response(response, checks=CHECKS)
    run_id = requests.get(f"{served}/api/deployments/{name['name']}/runs", headers=OPERATOR,
                          timeout=10).json()["runs"][0]["runId"]
    for path, parameters in [("/api/deployment-runs/{runId}", {"runId": run_id}),
                             ("/api/runs/{runId}", {"runId": run_id})]:
        case = schema[path]["GET"].Case(path_parameters=parameters)
        response = case.call(base_url=served, headers=OPERATOR, timeout=30)
        assert response.status_code == 200, (path, response.text)
        case.validate_response(response, checks=CHECKS)


def test_every_answer_is_one_the_document_declares(served):
    """Zero server errors and zero answers outside the document, over every operation, in both modes:
    data that fits the document and data that breaks it (which must get a declared 4xx)."""
    document = requests.get(f"{served}/api/openapi.json", timeout=10).json()
    # Every call signs in as an operator (as App Service Authentication would); without the security
    # requirements, invalid data goes to the parameters and bodies instead of dropping the sign-in
    # header (test_http_roles covers callers without their role).
    for operation_item in document["paths"].values():
        for described in operation_item.values():
            described.pop("security", None)
    schema = schemathesis.openapi.from_dict(document)
    calls: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    failures: dict[str, str] = {}  # one line per distinct failure: what broke, and the request that did it

    for operation in (result.ok() for result in schema.get_all_operations()):
        label = operation.label
        for mode in GenerationMode:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            def call(case: Any) -> None:
                calls[label] += 1  # noqa: B023 - call() runs within this iteration
                try:
                    response = case.call(base_url=served, headers=OPERATOR, timeout=30)
                    statuses[response.status_code] += 1
                    case.validate_response(response, checks=CHECKS)
                except (Failure, FailureGroup) as error:
                    for failure in getattr(error, "exceptions", None) or [error]:
                        key = f"{label}: {failure.title}"  # noqa: B023 - as above
                        failures.setdefault(key, f"{key}\n    {case.as_curl_command(headers=OPERATOR)}")

            try:
                call()
            except Unsatisfiable:  # no parameter or body to break: nothing invalid to send
                assert mode is GenerationMode.NEGATIVE, label

    answered = dict(sorted(statuses.items()))
    print(f"{sum(calls.values())} calls over {len(calls)} operations, answered {answered}, "
          f"{len(failures)} failing")
    assert set(calls) == {f"{method} {path}" for method, path in _operations(document)}
    assert not failures, f"{len(failures)} answers break the document:\n" + "\n".join(failures.values())
