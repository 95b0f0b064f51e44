"""The OpenAPI document of the HTTP API, built from the typed request models."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df
import azure.functions as func

from functions.http import json_response
from shared.deployment_definition import DeploymentDefinition

bp = df.Blueprint()


@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    """The API's OpenAPI 3.1 description; public, like the routes' shapes it describes."""
    return json_response(openapi_document())


# --- OpenAPI ----------------------------------------------------------------------------------------

_ERROR = {"$ref": "#/components/schemas/Error"}
_DEFINITION = {"$ref": "#/components/schemas/DeploymentDefinition"}
_READER = "Reader"
_OPERATOR = "Operator"


def _op(summary: str, role: str, responses: dict[str, str], body: dict[str, Any] | None = None,
        params: list[str] | None = None, ok_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """One operation; every non-2xx response is the shared error shape."""
    operation: dict[str, Any] = {
        "summary": summary,
        "description": f"Needs the app role {role}.",
        "responses": {
            code: {"description": text, "content": {"application/json": {
                "schema": _ERROR if code[0] in "45" else (ok_schema or {"type": "object"})
            }}} if code != "204" else {"description": text}
            for code, text in responses.items()
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        operation["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
        ]
    return operation


def _paths() -> dict[str, Any]:
    bad = "invalid field (error.field names it)"
    return {
        "/api/health": {"get": _op("Liveness and configuration check", "none",
                                   {"200": "ok", "503": "bad settings"})},
        "/api/machines": {"get": _op("The machine inventory, paged and filtered", _READER,
                                     {"200": "machines", "400": "bad filter"})},
        "/api/machines/{machineId}": {"get": _op("One machine's missing updates and assessments", _READER,
                                                 {"200": "machine", "404": "unknown"}, params=["machineId"])},
        "/api/updates/missing": {"get": _op("Updates missing in the fleet", _READER, {"200": "updates"})},
        "/api/updates/{os}/{update}/machines": {"get": _op(
            "Machines missing one update", _READER, {"200": "machines", "400": "bad os"},
            params=["os", "update"])},
        "/api/discoveries": {"post": _op("Start a fleet discovery", _OPERATOR,
                                         {"202": "started", "400": bad})},
        "/api/assessments": {"post": _op("Start an assessment", _OPERATOR, {"202": "started", "400": bad})},
        "/api/runs/{runId}": {"get": _op("Status of a run", _READER, {"200": "status", "404": "unknown"},
                                         params=["runId"])},
        "/api/openapi.json": {"get": _op("This document", "none", {"200": "OpenAPI 3.1"})},
        "/api/deployments": {
            "get": _op("List update deployments", _READER, {"200": "deployments"}),
            "post": _op("Create an update deployment", _OPERATOR,
                        {"201": "created", "400": bad, "409": "name taken (ignoring case)",
                         "502": "a group could not be evaluated"}, body=_DEFINITION, ok_schema=_DEFINITION),
        },
        "/api/deployments/{name}": {
            "get": _op("One update deployment", _READER, {"200": "deployment", "404": "unknown"},
                       params=["name"], ok_schema=_DEFINITION),
            "put": _op("Replace an update deployment (If-Match: ETag optional)", _OPERATOR,
                       {"200": "replaced", "400": bad, "404": "unknown", "412": "changed since the ETag"},
                       body=_DEFINITION, params=["name"], ok_schema=_DEFINITION),
            "delete": _op("Delete an update deployment", _OPERATOR, {"204": "deleted", "404": "unknown"},
                          params=["name"]),
        },
    }


def openapi_document() -> dict[str, Any]:
    schema = DeploymentDefinition.model_json_schema(
        by_alias=True, ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = schema.pop("$defs", {})
    schemas["DeploymentDefinition"] = schema
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"},
        }}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Patch management API", "version": "1"},
        "paths": _paths(),
        "components": {"schemas": schemas},
    }
