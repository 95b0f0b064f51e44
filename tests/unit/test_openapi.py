"""The OpenAPI document tells what the routes do: who may call them, and what they take."""

from __future__ import annotations

import function_app
from functions.http import required_role
from functions.openapi import openapi_document
from local.app_index import app_functions
from shared.deployments.definition import MAX_MACHINES
from shared.fleet import scope
from shared.fleet.machine_query import ACCEPTED_PARAMETERS
from shared.principal import PRINCIPAL_HEADER

DOCUMENT = openapi_document()


def _operations():
    return {(method.upper(), path): operation
            for path, item in DOCUMENT["paths"].items() for method, operation in item.items()}


def test_sign_in_is_app_service_authentication_passing_the_principal_header():
    scheme = DOCUMENT["components"]["securitySchemes"]["appServiceAuthentication"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", PRINCIPAL_HEADER)


def test_each_operation_names_its_function_and_the_role_that_function_requires():
    functions = app_functions(function_app.app)
    roles = {f.get_function_name(): required_role(f.get_user_function()) for f in functions}
    for (method, path), operation in _operations().items():
        role = roles[operation["operationId"]]
        if role is None:
            assert operation["security"] == [], (method, path)
            assert not {"401", "403"} & set(operation["responses"])
        else:
            assert operation["security"] == [{"appServiceAuthentication": []}], (method, path)
            assert {"401", "403", "503"} <= set(operation["responses"]), (method, path)
            assert role.value in operation["description"]
    public = {path for (_, path), operation in _operations().items() if not operation["security"]}
    assert public == {"/api/health", "/api/openapi.json"}


def test_every_body_and_query_parameter_is_described():
    operations = _operations()
    for key in [("POST", "/api/assessments"), ("POST", "/api/discoveries"), ("POST", "/api/deployments"),
                ("PUT", "/api/deployments/{name}"), ("POST", "/api/deployment-runs")]:
        assert operations[key]["requestBody"]["required"] is True
        assert {"400", "413"} <= set(operations[key]["responses"]), key
    machine_query = {p["name"] for p in operations["GET", "/api/machines"]["parameters"]}
    assert machine_query == set(ACCEPTED_PARAMETERS)
    def names(method: str, path: str) -> list[str]:
        return [p["name"] for p in operations[method, path]["parameters"]]

    assert names("GET", "/api/updates/missing") == ["os", "classification"]
    assert names("GET", "/api/deployments/{name}/runs") == ["name", "top"]
    assert names("GET", "/api/deployment-runs/{runId}") == ["runId", "status"]


def test_the_assessment_body_schema_names_exactly_the_fields_the_parser_reads():
    body = _operations()["POST", "/api/assessments"]["requestBody"]["content"]["application/json"]["schema"]
    assert tuple(body["properties"]) == scope._FIELDS
    assert body["additionalProperties"] is False


def test_the_definition_shows_its_bounds_and_patterns():
    schemas = DOCUMENT["components"]["schemas"]
    definition = schemas["DeploymentDefinition"]["properties"]
    assert definition["name"]["pattern"].startswith("^[A-Za-z0-9]")
    window = definition["maintenanceWindowMinutes"]
    assert (window["minimum"], window["maximum"]) == (30, 360)
    assert "Critical" in definition["classifications"]["items"]["enum"]
    assert schemas["Targets"]["properties"]["machines"]["maxItems"] == MAX_MACHINES
    assert schemas["Deployment"]["properties"]["frozenGroupMembers"]["maxItems"] == MAX_MACHINES
    start = schemas["Schedule"]["properties"]["startTime"]
    assert "format" not in start and start["pattern"].endswith("$")  # a wall time, without an offset
