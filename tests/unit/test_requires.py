"""``requires``: the role check that runs before an HTTP handler, sync or async."""

from __future__ import annotations

import asyncio
import inspect
import json
import typing
from typing import Any

import azure.functions as func
import pytest

from functions.http import requires
from shared.principal import PRINCIPAL_HEADER, Principal, Role, encode_principal

seen: list[Any] = []  # what the handlers were called with


@pytest.fixture(autouse=True)
def behind_app_service_authentication(monkeypatch):
    """As in Azure with authentication on: the platform injects WEBSITE_AUTH_ENABLED=True."""
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")
    monkeypatch.delenv("LOCAL_AUTHENTICATION_STANDIN", raising=False)


@requires(Role.OPERATOR)
async def start_something(req: func.HttpRequest, client: str, principal: Principal) -> func.HttpResponse:
    seen.append((client, principal))
    return func.HttpResponse(status_code=202)


@requires(Role.READER)
def read_something(req: func.HttpRequest) -> func.HttpResponse:
    seen.append(req.url)
    return func.HttpResponse(status_code=200)


def request(*roles: Role, name: str = "olga") -> func.HttpRequest:
    headers = {PRINCIPAL_HEADER: encode_principal(name, list(roles))} if roles else {}
    return func.HttpRequest("POST", "http://localhost/api/something", headers=headers, body=b"")


def test_the_handler_runs_with_the_caller_when_the_role_is_held():
    seen.clear()
    response = asyncio.run(start_something(req=request(Role.OPERATOR), client="binding"))
    assert response.status_code == 202
    assert seen == [("binding", Principal("olga", frozenset({Role.OPERATOR, Role.READER})))]
    assert read_something(req=request(Role.OPERATOR)).status_code == 200  # an operator may read


def test_401_and_403_come_back_before_the_handler_runs():
    seen.clear()
    anonymous = asyncio.run(start_something(req=request(), client="binding"))
    assert anonymous.status_code == 401
    assert json.loads(anonymous.get_body())["error"]["code"] == "NotSignedIn"
    reader = asyncio.run(start_something(req=request(Role.READER, name="rita"), client="binding"))
    assert reader.status_code == 403
    assert json.loads(reader.get_body())["error"] == {
        "code": "Forbidden", "message": f"rita lacks the app role {Role.OPERATOR.value}",
    }
    assert read_something(req=request()).status_code == 401
    assert seen == []


def test_the_worker_sees_the_bindings_only_and_async_stays_async():
    assert list(inspect.signature(start_something).parameters) == ["req", "client"]
    assert set(typing.get_type_hints(start_something)) == {"req", "client", "return"}
    assert inspect.iscoroutinefunction(start_something)
    assert list(inspect.signature(read_something).parameters) == ["req"]
    assert not inspect.iscoroutinefunction(read_something)


def test_without_app_service_authentication_a_forged_operator_header_gets_401(monkeypatch, caplog):
    # Authentication switched off: nothing strips a caller's own X-MS-CLIENT-PRINCIPAL, so none is believed.
    monkeypatch.delenv("WEBSITE_AUTH_ENABLED")
    seen.clear()
    forged = asyncio.run(start_something(req=request(Role.OPERATOR, Role.APPROVER), client="binding"))
    assert forged.status_code == 401
    error = json.loads(forged.get_body())["error"]
    assert error["code"] == "AuthenticationOff" and "WEBSITE_AUTH_ENABLED" in error["message"]
    assert read_something(req=request(Role.READER)).status_code == 401
    assert seen == []
    assert "refusing every protected route" in caplog.text
    # The local host's stand-in counts only with the emulator: set in Azure, it lets nothing in.
    monkeypatch.setenv("LOCAL_AUTHENTICATION_STANDIN", "true")
    monkeypatch.setenv("AZURE_AUTH_MODE", "managed-identity")
    assert read_something(req=request(Role.READER)).status_code == 401
    monkeypatch.setenv("AZURE_AUTH_MODE", "emulator")
    assert read_something(req=request(Role.READER)).status_code == 200
