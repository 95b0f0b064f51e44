"""Every HTTP function of the app checks the caller's role before it runs (``functions.http.requires``),
and shows the Functions worker only the parameters it binds by name."""

from __future__ import annotations

import inspect
import json
import re
import typing
import uuid
from datetime import UTC, datetime

import pytest

import function_app
from local.app_index import app_functions
from local.clock import VirtualClock
from local.durable import DurableRunner
from local.functions_host import FunctionsHost
from shared.deployments.definition import validate_definition
from shared.deployments.runs_table import run_store
from shared.principal import Role, encode_principal
from shared.settings import load_settings
from tests.unit.test_deployment_definition import windows

# Public: liveness and the API's description.
OPEN_ROUTES = {"health", "openapi"}
# A client binding that points nowhere: the role check answers before the client is used.
UNREACHABLE_DURABLE = json.dumps({
    "taskHubName": "TestHub", "creationUrls": {}, "managementUrls": {}, "rpcBaseUrl": "http://127.0.0.1:9/",
})


def _http_functions() -> list[typing.Any]:
    return [f for f in app_functions(function_app.app)
            if any(str(b.type) == "httpTrigger" for b in f.get_bindings())]


def test_the_worker_sees_only_the_bindings_of_each_http_function():
    # The worker matches parameters to bindings by name and checks their type hints; a wrapper that
    # showed it ``*args, **kwargs`` or the ``principal`` it adds would fail the function's indexing.
    functions = _http_functions()
    assert len(functions) >= 20
    for function in functions:
        user_function = function.get_user_function()
        bindings = {b.name for b in function.get_bindings() if b.name != "$return"}
        assert set(inspect.signature(user_function).parameters) == bindings, function.get_function_name()
        assert set(typing.get_type_hints(user_function)) == bindings | {"return"}
    starters = {f.get_function_name() for f in functions
                if inspect.iscoroutinefunction(f.get_user_function())}
    assert {"start_discovery", "start_deployment_now", "read_run"} <= starters


def test_every_route_but_health_and_openapi_refuses_callers_without_their_role(app_settings):
    anonymous = FunctionsHost(function_app.app, lambda: UNREACHABLE_DURABLE)
    nobody = FunctionsHost(function_app.app, lambda: UNREACHABLE_DURABLE,
                           signed_in_principal=encode_principal("nemo", []))
    guarded = [entry for entry in anonymous.functions.values()
               if entry.trigger == "httpTrigger" and entry.name not in OPEN_ROUTES]
    assert len(guarded) >= 19
    for entry in guarded:
        assert entry.route is not None
        path = "/api/" + re.sub(r"\{[^}]+\}", "x", entry.route)
        for method in entry.methods:
            refused = anonymous.request(method, path)
            assert refused.status_code == 401, (method, path)
            assert json.loads(refused.get_body())["error"]["code"] == "NotSignedIn"
            forbidden = nobody.request(method, path)
            assert forbidden.status_code == 403, (method, path)
            assert json.loads(forbidden.get_body())["error"]["message"].startswith("nemo lacks the app role ")


def test_a_reader_is_refused_what_needs_an_operator(app_settings):
    reader = FunctionsHost(function_app.app, lambda: UNREACHABLE_DURABLE,
                           signed_in_principal=encode_principal("rita", [Role.READER]))
    refused = reader.request("POST", "/api/deployment-runs/any-run/cancel")
    assert refused.status_code == 403
    assert json.loads(refused.get_body())["error"] == {
        "code": "Forbidden", "message": f"rita lacks the app role {Role.OPERATOR.value}",
    }


def test_a_cancel_records_who_asked_for_it(app_settings):
    run_id = f"deploy-roles-{uuid.uuid4().hex[:8]}"
    definition = validate_definition({**windows(), "name": f"roles-{uuid.uuid4().hex[:8]}"})
    assert run_store(load_settings()).create_run(run_id, definition, "http", datetime.now(UTC))
    # Cancel asks the Durable client whether the run's orchestration still exists (a run just created
    # and not started yet is left for it to close).
    with DurableRunner(function_app.app, VirtualClock(), task_hub="TestHub") as durable:
        operator = FunctionsHost(function_app.app, durable.client_binding_json,
                                 signed_in_principal=encode_principal("olga", [Role.OPERATOR]))
        response = operator.request("POST", f"/api/deployment-runs/{run_id}/cancel")
    assert response.status_code == 202, response.get_body()
    body = json.loads(response.get_body())
    assert body["cancelRequested"] is True and body["cancelledBy"] == "olga"


@pytest.mark.parametrize("path", ["/api/health", "/api/openapi.json"])
def test_health_and_the_api_description_need_no_sign_in(app_settings, path):
    assert FunctionsHost(function_app.app).request("GET", path).status_code == 200
