"""The OpenAPI document of the HTTP API, built from the typed request models."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df
import azure.functions as func

from functions.deployment_runs_api import DEFAULT_RUNS_TOP, MACHINE_STATUSES, MAX_RUNS_TOP, STEPS
from functions.http import json_response
from shared.deployments.definition import DeploymentDefinition
from shared.deployments.results import MachineResultStatus
from shared.deployments.runs_table import RunState
from shared.model.install_outcome import InstallationState

bp = df.Blueprint()


@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    """The API's OpenAPI 3.1 description; public, like the routes' shapes it describes."""
    return json_response(openapi_document())


# --- OpenAPI ----------------------------------------------------------------------------------------

_ERROR = {"$ref": "#/components/schemas/Error"}
_DEFINITION = {"$ref": "#/components/schemas/DeploymentDefinition"}
_DEPLOYMENT = {"$ref": "#/components/schemas/Deployment"}
_RUN = {"$ref": "#/components/schemas/DeploymentRun"}
_ACCEPTED = {"$ref": "#/components/schemas/RunAccepted"}
_RUN_LIST = {"$ref": "#/components/schemas/DeploymentRunList"}
_RUN_DETAIL = {"$ref": "#/components/schemas/DeploymentRunDetail"}
_RUN_MACHINE_DETAIL = {"$ref": "#/components/schemas/DeploymentRunMachineDetail"}
_TOP = {"name": "top", "in": "query", "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_RUNS_TOP, "default": DEFAULT_RUNS_TOP}}
_STATUS = {"name": "status", "in": "query", "required": False,
           "description": f"one or more (comma-separated) of: {', '.join(MACHINE_STATUSES)}",
           "schema": {"type": "string"}}
_READER = "Reader"
_OPERATOR = "Operator"


def _op(summary: str, role: str, responses: dict[str, str], body: dict[str, Any] | None = None,
        params: list[str] | None = None, ok_schema: dict[str, Any] | None = None,
        query: list[dict[str, Any]] | None = None) -> dict[str, Any]:
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
    if params or query:
        operation["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params or ()
        ] + list(query or ())
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
                         "502": "a group could not be evaluated"}, body=_DEFINITION, ok_schema=_DEPLOYMENT),
        },
        "/api/deployments/{name}/runs": {
            "get": _op("A deployment's runs, newest first (?top=); runs of a deleted deployment stay listed",
                       _READER,
                       {"200": "runs", "400": "bad top", "404": "no such deployment and no runs of one"},
                       params=["name"], query=[_TOP], ok_schema=_RUN_LIST),
            "post": _op("Run a stored deployment now", _OPERATOR, {"202": "started", "404": "unknown"},
                        params=["name"], ok_schema=_ACCEPTED),
        },
        "/api/deployment-runs": {"post": _op(
            "Run a definition given in the body now, without storing it", _OPERATOR,
            {"202": "started", "400": bad}, body=_DEFINITION, ok_schema=_ACCEPTED)},
        "/api/deployment-runs/{runId}": {"get": _op(
            "One deployment run and its machines (?status=failed, comma-separated for several)", _READER,
            {"200": "run", "400": "bad status", "404": "unknown run"}, params=["runId"], query=[_STATUS],
            ok_schema=_RUN_DETAIL)},
        "/api/deployment-runs/{runId}/cancel": {"post": _op(
            "Stop starting machines; running ones finish, waiting ones are recorded as cancelled", _OPERATOR,
            {"202": "cancel requested (the run)", "404": "unknown run", "409": "the run has finished"},
            params=["runId"], ok_schema=_RUN)},
        "/api/deployment-runs/{runId}/machines/{machine}": {"get": _op(
            "One machine of a run: result, updates its install reported, links to its step outputs", _READER,
            {"200": "machine", "404": "unknown run or machine"}, params=["runId", "machine"],
            ok_schema=_RUN_MACHINE_DETAIL)},
        "/api/deployment-runs/{runId}/machines/{machine}/outputs/{step}": {"get": _op(
            "The output a step stored (prescan, install1, install2, postscan), as stored", _READER,
            {"200": "the stored document", "404": "unknown run, machine or step output"},
            params=["runId", "machine", "step"])},
        "/api/deployments/{name}": {
            "get": _op("One update deployment", _READER, {"200": "deployment", "404": "unknown"},
                       params=["name"], ok_schema=_DEPLOYMENT),
            "put": _op("Replace an update deployment (If-Match: ETag optional)", _OPERATOR,
                       {"200": "replaced", "400": bad, "404": "unknown", "412": "changed since the ETag"},
                       body=_DEFINITION, params=["name"], ok_schema=_DEPLOYMENT),
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
    moment = {"type": ["string", "null"], "format": "date-time"}
    schemas["Deployment"] = {"allOf": [_DEFINITION, {"type": "object", "properties": {
        "frozenGroupMembers": {"type": ["array", "null"], "items": {"type": "string"},
                               "description": "members frozen at creation; null when evaluated per run"},
        "created": moment, "modified": moment,
        "nextRun": {**moment, "description": "the next occurrence of the schedule; null once it has ended"},
        "lastRun": {"oneOf": [{"$ref": "#/components/schemas/DeploymentRun"}, {"type": "null"}]},
        "runs": {"type": "string", "description": "GET this for the deployment's runs"},
    }}]}  # fmt: skip
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"},
        }}},
    }
    schemas.update(_run_schemas())
    return {
        "openapi": "3.1.0",
        "info": {"title": "Patch management API", "version": "1"},
        "paths": _paths(),
        "components": {"schemas": schemas},
    }


def _run_schemas() -> dict[str, Any]:
    """Shapes of the deployment-run routes: RunRecord.to_json, machine_to_json and what the routes add."""
    text, nullable_text = {"type": "string"}, {"type": ["string", "null"]}
    moment = {"type": ["string", "null"], "format": "date-time"}
    integer = {"type": "integer"}
    run: dict[str, Any] = {"type": "object", "properties": {
        "runId": text, "deployment": text,
        "trigger": {**text, "description": "schedule, http or http-inline"},
        "state": {"enum": [s.value for s in RunState]},
        "created": {"type": "string", "format": "date-time"}, "occurrence": moment,
        "windowStart": moment, "windowMinutes": integer, "windowEnd": moment,
        "machines": {**integer, "description": "number of target machines"},
        "started": integer, "running": integer, "queued": integer,
        "results": {"type": "object", "properties": {s.value: integer for s in MachineResultStatus}},
        "cancelRequested": {"type": "boolean"}, "cancelledBy": nullable_text, "stopReason": nullable_text,
        "finished": moment, "error": nullable_text,
        "link": {**text, "description": "GET this for the run's machines"},
    }}  # fmt: skip
    machine: dict[str, Any] = {"type": "object", "properties": {
        "machine": {**text, "description": "the machine's key within the run"}, "resourceId": text,
        "computer": nullable_text, "status": {"enum": list(MACHINE_STATUSES)}, "reason": nullable_text,
        "startedAt": moment, "finishedAt": moment, "duration": {**nullable_text, "description": "ISO 8601"},
        "installed": integer, "failed": integer, "pending": integer, "excluded": integer,
        "rebootStatus": nullable_text, "errorCode": nullable_text, "errorMessage": nullable_text,
        "hint": nullable_text, "outputs": {"type": "array", "items": {"enum": list(STEPS)}},
        "link": text,
    }}  # fmt: skip
    update = {"type": "object", "properties": {
        "patchId": text, "name": text, "kbId": nullable_text, "version": nullable_text,
        "classifications": {"type": "array", "items": text},
        "installationState": {"enum": [s.value for s in InstallationState]},
    }}  # fmt: skip
    output_link = {"type": "object", "properties": {"step": {"enum": list(STEPS)}, "link": text}}
    return {
        "RunAccepted": {"type": "object", "required": ["runId", "status"], "properties": {
            "runId": text, "status": {**text, "description": "GET this for the run's progress"},
        }},
        "DeploymentRun": run,
        "DeploymentRunList": {"type": "object", "properties": {
            "deployment": text, "count": integer, "total": {**integer, "description": "runs stored"},
            "runs": {"type": "array", "items": run},
        }},
        "DeploymentRunMachine": machine,
        # The detail routes replace "machines" (a count) and "outputs" (step names) with lists.
        "DeploymentRunDetail": {"type": "object", "properties": {
            **run["properties"],
            "machineCount": {**integer, "description": "number of target machines"},
            "count": {**integer, "description": "machines listed (after ?status=)"},
            "machines": {"type": "array", "items": {"$ref": "#/components/schemas/DeploymentRunMachine"}},
        }},
        "DeploymentRunMachineDetail": {"type": "object", "properties": {
            **machine["properties"],
            "updatesAvailable": {"type": "boolean",
                                 "description": "false for Arc servers (counts only) or without an install"},
            "updates": {"type": "array", "items": update},
            "outputs": {"type": "array", "items": output_link},
        }},
    }  # fmt: skip
