"""Hostile input gets a 4xx naming the problem, never a 500, and leaves nothing stored (issue 11, part 6).

Every JSON body goes through ``functions.http.read_json`` (size, UTF-8, depth, JSON, then the typed model);
the principal header is believed only behind App Service Authentication or the local host's stand-in.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

import function_app
from functions import deployments_api
from functions.http import MAX_BODY_BYTES, MAX_JSON_DEPTH
from local.functions_host import FunctionsHost
from shared.deployments.definition import (
    MAX_DEFINITION_CHARS,
    MAX_KB_NUMBERS,
    MAX_MACHINES,
    MAX_PACKAGE_MASKS,
)
from shared.deployments.definitions_table import DeploymentNotFound, deployment_store
from shared.deployments.runs_table import run_store
from shared.principal import PRINCIPAL_HEADER, Role, encode_principal
from shared.settings import load_settings
from tests.unit.test_deployment_definition import linux, vm, windows

# A client binding that points nowhere: a handler that refused its body never reaches it (and one that
# did would fail to start anything), so a 4xx here also means no run was started.
UNREACHABLE_DURABLE = json.dumps({
    "taskHubName": "TestHub", "creationUrls": {}, "managementUrls": {}, "rpcBaseUrl": "http://127.0.0.1:9/",
})
# Every route that reads a JSON body, with the definition-shaped ones marked.
JSON_ROUTES = [("POST", "/api/assessments"), ("POST", "/api/discoveries"), ("POST", "/api/deployments"),
               ("PUT", "/api/deployments/{name}"), ("POST", "/api/deployment-runs")]


@pytest.fixture
def operator(app_settings) -> FunctionsHost:
    return FunctionsHost(function_app.app, lambda: UNREACHABLE_DURABLE,
                         signed_in_principal=encode_principal("olga", [Role.OPERATOR]))


def named(body: dict[str, Any]) -> dict[str, Any]:
    """Azurite is shared by the session: each definition gets a name of its own."""
    return {**body, "name": f"{body['name']}-{uuid.uuid4().hex[:8]}"}


def linux_machines() -> dict[str, Any]:
    """A Linux definition with explicit machines, so nothing but its body decides the answer."""
    return named({**linux(), "targets": {"machines": [vm("web01").resource_id]}})


def error_of(response) -> dict[str, Any]:
    return json.loads(response.get_body())["error"]


def assert_nothing_stored(name: str) -> None:
    settings = load_settings()
    with pytest.raises(DeploymentNotFound):
        deployment_store(settings).get(name)
    assert run_store(settings).run_ids(name) == []


def send(host: FunctionsHost, method: str, path: str, body: bytes, name: str) -> Any:
    return host.request(method, path.format(name=name), body=body)


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
def test_a_body_over_the_limit_is_413(operator, method, path):
    definition = linux_machines()
    # Valid JSON up to the end, so only its size is wrong: an 11 MB definition.
    padded = {**definition, "packagesToInclude": ["a" * 200] * 55_000}
    body = json.dumps(padded).encode()
    assert len(body) > 2 * MAX_BODY_BYTES
    response = send(operator, method, path, body, definition["name"])
    assert response.status_code == 413, response.get_body()
    assert error_of(response)["code"] == "BodyTooLarge"
    assert f"{MAX_BODY_BYTES:,}" in error_of(response)["message"]
    assert_nothing_stored(definition["name"])


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
def test_json_nested_10000_deep_is_400_naming_the_limit(operator, method, path):
    response = send(operator, method, path, b"[" * 10_000 + b"]" * 10_000, "deep")
    assert response.status_code == 400, response.get_body()
    error = error_of(response)
    assert error["code"] == "JsonTooDeep" and str(MAX_JSON_DEPTH) in error["message"]
    # Brackets inside strings are text, not nesting.
    text = json.dumps({**linux_machines(), "name": "x" + "[" * 100})
    assert send(operator, "POST", "/api/deployments", text.encode(), "x").status_code == 400
    assert error_of(send(operator, "POST", "/api/deployments", text.encode(), "x"))["field"] == "name"


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
def test_invalid_utf8_is_400(operator, method, path):
    definition = linux_machines()
    body = json.dumps(definition).encode().replace(b"Linux", b"Lin\xffux")
    response = send(operator, method, path, body, definition["name"])
    assert response.status_code == 400, response.get_body()
    assert error_of(response)["code"] == "InvalidEncoding" and "UTF-8" in error_of(response)["message"]
    assert_nothing_stored(definition["name"])


# The last: an unterminated string of escaped quotes, which a depth count that rescans strings takes hours on.
@pytest.mark.parametrize("body", [
    b"[1, 2", b"NaN", b'{"all": Infinity}', b"1" * 5000, b'"' + b'\\"' * 300_000,
])
def test_what_is_not_strict_json_is_400(operator, body):
    response = operator.request("POST", "/api/assessments", body=body)
    assert response.status_code == 400, response.get_body()
    assert error_of(response)["code"] == "InvalidJson"


@pytest.mark.parametrize("body", [b"", b"   ", b"null", b"{}", b'{"tagMatch": "any"}'])
def test_an_assessment_must_say_all_or_name_a_scope(operator, body):
    response = operator.request("POST", "/api/assessments", body=body)
    assert response.status_code == 400, response.get_body()
    error = error_of(response)
    assert error["field"] == "body" and '{"all": true}' in error["message"]


def test_all_cannot_be_narrowed_or_anything_but_a_boolean(operator):
    narrowed = operator.request("POST", "/api/assessments", body={"all": True, "osType": "Linux"})
    assert narrowed.status_code == 400 and error_of(narrowed)["field"] == "all"
    not_boolean = operator.request("POST", "/api/assessments", body={"all": "yes"})
    assert not_boolean.status_code == 400 and error_of(not_boolean)["field"] == "all"


@pytest.mark.parametrize(("path", "field", "base", "value"), [
    ("/api/deployments", "packagesToInclude", linux_machines, ["pkg"] * (MAX_PACKAGE_MASKS + 1)),
    ("/api/deployments", "packagesToExclude", linux_machines, ["a" * 257]),
    ("/api/deployments", "kbNumbersToInclude", lambda: named(windows()), ["KB1"] * (MAX_KB_NUMBERS + 1)),
    ("/api/deployment-runs", "packagesToExclude", linux_machines, ["pkg"] * (MAX_PACKAGE_MASKS + 1)),
])
def test_list_limits_are_400_naming_the_field(operator, path, field, base, value):
    definition = base()
    response = operator.request("POST", path, body={**definition, field: value})
    assert response.status_code == 400, response.get_body()
    error = error_of(response)
    assert error["field"] == field
    assert "at most" in error["message"] or "not a package mask" in error["message"]
    assert_nothing_stored(definition["name"])


@pytest.mark.parametrize("path", ["/api/deployments", "/api/deployment-runs"])
def test_a_definition_too_big_to_store_is_413_before_anything_is_written(operator, path):
    definition = linux_machines()
    # Within every list limit and under the body limit, but past what a definition may hold: MAX_MACHINES
    # machines with the longest names and full package lists.
    machine = vm("m").resource_id.replace("/rg/", "/rg-" + "g" * 87 + "/")
    big = {**definition, "packagesToInclude": [f"{n:04d}" + "a" * 240 for n in range(MAX_PACKAGE_MASKS)],
           "packagesToExclude": [f"{n:04d}" + "b" * 240 for n in range(MAX_PACKAGE_MASKS)],
           "targets": {"machines": [f"{machine}{n:05d}" + "x" * 58 for n in range(MAX_MACHINES)]}}
    body = json.dumps(big).encode()
    assert len(body) < MAX_BODY_BYTES and len(body) > MAX_DEFINITION_CHARS
    response = operator.request("POST", path, body=body)
    assert response.status_code == 413, response.get_body()
    assert error_of(response)["code"] == "TooLargeToStore"
    assert f"{MAX_DEFINITION_CHARS:,}" in error_of(response)["message"]
    assert_nothing_stored(definition["name"])


def _guarded_routes(host: FunctionsHost) -> list[tuple[str, str]]:
    return [(method, "/api/" + re.sub(r"\{[^}]+\}", "x", entry.route or ""))
            for entry in host.functions.values()
            if entry.trigger == "httpTrigger" and entry.name not in {"health", "openapi"}
            for method in entry.methods]


@pytest.mark.parametrize("document", [b"[]", b'"operator"', b"42", b"null", b'{"claims": "x"}', b"[" * 5000])
def test_a_principal_that_is_not_a_json_object_is_401_on_every_protected_route(app_settings, document):
    header = base64.b64encode(document).decode()
    host = FunctionsHost(function_app.app, lambda: UNREACHABLE_DURABLE, signed_in_principal=header)
    routes = _guarded_routes(host)
    assert len(routes) >= 19
    for method, path in routes:
        response = host.request(method, path, body=b"{}")
        assert response.status_code == 401, (method, path, response.get_body())
        error = error_of(response)
        assert error["code"] == "NotSignedIn" and PRINCIPAL_HEADER in error["message"]


def test_with_authentication_off_a_forged_operator_header_is_401_everywhere(app_settings, monkeypatch):
    # Neither App Service Authentication (WEBSITE_AUTH_ENABLED) nor the local host's stand-in: nothing
    # strips a caller's own header, so the app believes none.
    monkeypatch.delenv("LOCAL_AUTHENTICATION_STANDIN")
    monkeypatch.delenv("WEBSITE_AUTH_ENABLED", raising=False)
    forged = FunctionsHost(function_app.app, lambda: UNREACHABLE_DURABLE,
                           signed_in_principal=encode_principal("mallory", list(Role)))
    definition = named(windows())
    for method, path in _guarded_routes(forged):
        body = json.dumps(definition).encode() if method in ("POST", "PUT") else b""
        response = forged.request(method, path, body=body)
        assert response.status_code == 401, (method, path, response.get_body())
        assert error_of(response)["code"] == "AuthenticationOff"
    assert_nothing_stored(definition["name"])
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")  # the platform says authentication is on
    assert forged.request("GET", "/api/deployments").status_code == 200


@pytest.mark.parametrize(("status", "code"), [(503, "StorageUnavailable"), (413, "TooLargeToStore")])
def test_storage_errors_never_reach_the_caller_raw(operator, monkeypatch, caplog, status, code):
    class Failing:
        def __getattr__(self, name: str) -> Any:
            def fail(*args: Any, **kwargs: Any) -> Any:
                error = HttpResponseError(message="secret-account.table.core.windows.net said no")
                error.status_code = status
                error.error_code = "ServerBusy" if status == 503 else "RequestBodyTooLarge"
                raise error

            return fail

    monkeypatch.setattr(deployments_api, "_store", lambda settings: Failing())
    for response in (operator.request("GET", "/api/deployments"),
                     operator.request("POST", "/api/deployments", body=linux_machines())):
        assert response.status_code == status, response.get_body()
        assert error_of(response)["code"] == code
        assert "secret-account" not in response.get_body().decode()
    assert "secret-account" in caplog.text  # logged for the operator of the app
