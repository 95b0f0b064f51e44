"""The OpenAPI document of the HTTP API, built from the typed request models."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df
import azure.functions as func

import functions.approvals_api as approvals_api
import functions.assessment as assessment
import functions.audit_api as audit_api
import functions.categories_api as categories_api
import functions.changes_api as changes_api
import functions.deployment_runs_api as deployment_runs_api
import functions.deployments_api as deployments_api
import functions.discovery as discovery
import functions.health_checks as health_checks
import functions.inventory_api as inventory_api
import functions.patches_api as patches_api
import functions.releases_api as releases_api
import functions.rollback as rollback
import functions.runs_api as runs_api
from functions.deployment_runs_api import DEFAULT_RUNS_TOP, MACHINE_STATUSES, MAX_RUNS_TOP, STEPS
from functions.discovery import StartDiscoveryBody
from functions.http import json_response, required_role, user_function
from functions.rollback import RollbackRequest
from shared.deployments.definition import MAX_MACHINES, DeploymentDefinition
from shared.deployments.results import MachineResultStatus
from shared.deployments.runs_table import RunState
from shared.fleet.machine_query import (
    DEFAULT_PAGE_SIZE,
    MAX_NAME_FILTER_CHARS,
    MAX_PAGE_SIZE,
    NAME_FILTERS,
    filter_values,
)
from shared.fleet.scope import scope_json_schema
from shared.governance.approvals import DecisionBody, RequestBody
from shared.governance.approvals_table import RequestState
from shared.governance.audit import DEFAULT_PAGE_SIZE as AUDIT_PAGE_SIZE
from shared.governance.audit import FORMATS as AUDIT_FORMATS
from shared.governance.categories import category_json_schema
from shared.governance.machine_changes import DEFAULT_PAGE_SIZE as CHANGES_PAGE_SIZE
from shared.governance.machine_changes import MAX_PAGE_SIZE as CHANGES_MAX_PAGE_SIZE
from shared.governance.patches import Action, FactsEdit, Impact, PatchState
from shared.governance.releases import HELD_REASON, ReleaseRequest
from shared.model.classification import Classification
from shared.model.install_outcome import InstallationState
from shared.model.machines import OsType
from shared.principal import PRINCIPAL_HEADER
from shared.safety.checks import Verdict

bp = df.Blueprint()


@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    """The API's OpenAPI 3.1 description; public, like the routes' shapes it describes."""
    return json_response(openapi_document())


# --- OpenAPI ----------------------------------------------------------------------------------------

_ERROR = {"$ref": "#/components/schemas/Error"}
_DEFINITION = {"$ref": "#/components/schemas/DeploymentDefinition"}
_INLINE_DEFINITION = {"$ref": "#/components/schemas/InlineDeploymentDefinition"}
_DEPLOYMENT = {"$ref": "#/components/schemas/Deployment"}
_RUN = {"$ref": "#/components/schemas/DeploymentRun"}
_ACCEPTED = {"$ref": "#/components/schemas/RunAccepted"}
_RUN_LIST = {"$ref": "#/components/schemas/DeploymentRunList"}
_RUN_DETAIL = {"$ref": "#/components/schemas/DeploymentRunDetail"}
_RUN_MACHINE_DETAIL = {"$ref": "#/components/schemas/DeploymentRunMachineDetail"}
_SIGNED_IN = "appServiceAuthentication"
_MACHINE_NAMES = ("the machine's id (as listed), its resource id URL-encoded (%2Fsubscriptions%2F...) or its "
                  "computer name, ignoring case")
_IGNORING_CASE = "matched ignoring case"


def _query(name: str, schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    parameter = {"name": name, "in": "query", "required": False, "schema": schema}
    return parameter | ({"description": description} if description else {})


def _one_of(values: list[str] | tuple[str, ...], description: str = _IGNORING_CASE) -> dict[str, Any]:
    return {"type": "string", "enum": list(values), "description": description}


_TOP = _query("top", {"type": "integer", "minimum": 1, "maximum": MAX_RUNS_TOP, "default": DEFAULT_RUNS_TOP})
# ``?status=`` is one status or several joined by ','; spaces and case are ignored when matching.
_STATUS_NAME = "|".join(MACHINE_STATUSES)
_STATUS = _query("status", {"type": "string", "pattern": f"^({_STATUS_NAME})(,({_STATUS_NAME}))*$"},
                 f"one or more (comma-separated) of: {', '.join(MACHINE_STATUSES)}")
_OS_NAMES = [o.value for o in OsType]
_MACHINE_FILTERS = [_query(name, _one_of(values)) for name, values in filter_values().items()] + [
    _query(name, {"type": "string", "minLength": 1, "maxLength": MAX_NAME_FILTER_CHARS},
           f"the machines placed in this asset {name} ({_IGNORING_CASE} when category names the "
           "category; 'uncategorised' for those no category takes)")
    for name in NAME_FILTERS
] + [
    _query("tag", {"type": "string", "pattern": "^[^:,]+:[^,]*(,[^:,]+:[^,]*)*$"},
           "key:value, several joined by ',' (all must match)"),
    _query("pageSize",
           {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE}),
    _query("nextToken", {"type": "string"}, "the nextToken of the previous page"),
]
_MISSING_FILTERS = [_query("os", _one_of(_OS_NAMES)),
                    _query("classification", _one_of([c.value for c in Classification], "as written"))]
_ON = _query("on", {"type": "string", "format": "date"}, "also answer whether it was compliant that day")
_IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "the ETag of the deployment as read; 412 if it changed since"}
PathParameter = str | tuple[str, dict[str, Any]]


def _op(summary: str, handler: Any, responses: dict[str, str], body: dict[str, Any] | None = None,
        params: list[PathParameter] | None = None, ok_schema: dict[str, Any] | None = None,
        query: list[dict[str, Any]] | None = None,
        schemas: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One operation of ``handler``; the role its ``@requires`` recorded decides its security and adds
    401/403/503. Every 4xx/5xx is the shared error shape unless ``schemas`` says otherwise."""
    role = required_role(handler)
    if role is not None:
        # functions.http.requires answers these three before or around the handler.
        responses = {**responses, "401": "not signed in", "403": f"lacks the app role {role.value}",
                     "503": "the app's storage could not complete the request; try again"}
    if body is not None:  # every body is read as JSON within the host's size limit
        responses = {"400": "not JSON, or invalid fields (error.details lists each with its rule)",
                     **responses,
                     "413": "body too large"}
    operation: dict[str, Any] = {
        "operationId": user_function(handler).__name__,
        "summary": summary,
        "description": f"Needs the app role {role.value}." if role else "Public: no sign-in needed.",
        "security": [{_SIGNED_IN: []}] if role else [],
        "responses": {
            code: {"description": text, "content": {"application/json": {"schema": (schemas or {}).get(
                code, _ERROR if code[0] in "45" else (ok_schema or {"type": "object"})
            )}}} if code != "204" else {"description": text}
            for code, text in sorted(responses.items())
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params or query:
        operation["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
            if isinstance(p, str) else {"name": p[0], "in": "path", "required": True, "schema": p[1]}
            for p in params or ()
        ] + list(query or ())
    return operation


def _paths() -> dict[str, Any]:
    bad = "invalid fields (error.details lists each with its rule; error.field is the first)"
    run_id = ("runId", {"type": "string", "minLength": 1})
    machine = ("machine", {"type": "string", "minLength": 1, "description": _MACHINE_NAMES})
    not_unique = "the computer name is not unique (error.candidates lists the machines)"
    health = {"type": "object", "properties": {
        "status": {"enum": ["ok", "misconfigured"]},
        "problems": {"type": "array", "items": {"type": "string"}},
    }}  # fmt: skip
    return {
        "/api/health": {"get": _op("Liveness and configuration check", runs_api.health,
                                   {"200": "ok", "503": "bad settings"}, ok_schema=health,
                                   schemas={"503": health})},
        "/api/machines": {"get": _op("The machine inventory, paged and filtered", inventory_api.list_machines,
                                     {"200": "machines", "400": "bad filters (error.details lists each)"},
                                     query=_MACHINE_FILTERS)},
        "/api/machines/{machineId}": {"get": _op(
            "One machine's missing updates and assessments", inventory_api.read_machine,
            {"200": "machine", "400": "bad date", "404": "no machine by that name", "409": not_unique},
            params=[("machineId", machine[1])], query=[_ON])},
        "/api/machines/{machineId}/changes": {"get": _op(
            "One machine's change history, newest first: each update a deployment installed or tried, with "
            "its run, status, the test evidence and the approval behind it", changes_api.read_machine_changes,
            {"200": "changes", "400": "bad pageSize or nextToken", "404": "no machine by that name",
             "409": not_unique},
            params=[("machineId", machine[1])], query=[
                _query("pageSize", {"type": "integer", "minimum": 1, "maximum": CHANGES_MAX_PAGE_SIZE,
                                    "default": CHANGES_PAGE_SIZE}),
                _query("nextToken", {"type": "string"}, "the nextToken of the previous page")],
            ok_schema={"$ref": "#/components/schemas/MachineChanges"})},
        "/api/updates/missing": {"get": _op(
            "Updates missing in the fleet", inventory_api.list_missing_updates,
            {"200": "updates", "400": "bad filter"}, query=_MISSING_FILTERS)},
        "/api/updates/{os}/{update}/machines": {"get": _op(
            "Machines missing one update", inventory_api.list_machines_needing_update,
            {"200": "machines", "400": "bad os or category"}, params=[("os", _one_of(_OS_NAMES)), "update"],
            query=[_query("category", {"type": "string"}, "an asset category, or uncategorised")])},
        "/api/discoveries": {"post": _op("Start a fleet discovery", discovery.start_discovery,
                                         {"202": "started", "400": bad}, ok_schema=_ACCEPTED,
                                         body=StartDiscoveryBody.model_json_schema())},
        "/api/assessments": {"post": _op("Start an assessment of a scope", assessment.start_assessment_run,
                                         {"202": "started", "400": bad}, ok_schema=_ACCEPTED,
                                         body=scope_json_schema())},
        "/api/runs/{runId}": {"get": _op("Status of a run", runs_api.read_run,
                                         {"200": "status", "404": "unknown"}, params=[run_id])},
        "/api/openapi.json": {"get": _op("This document", openapi, {"200": "OpenAPI 3.1"})},
        "/api/deployments": {
            "get": _op("List update deployments", deployments_api.list_deployments, {"200": "deployments"},
                       ok_schema={"type": "object", "required": ["count", "deployments"], "properties": {
                           "count": {"type": "integer"},
                           "deployments": {"type": "array", "items": _DEPLOYMENT},
                       }}),
            "post": _op("Create an update deployment", deployments_api.create_deployment,
                        {"201": "created", "400": bad, "409": "name taken (ignoring case)",
                         "502": "a group could not be evaluated"}, body=_DEFINITION, ok_schema=_DEPLOYMENT),
        },
        "/api/deployments/{name}/runs": {
            "get": _op("A deployment's runs, newest first (?top=); runs of a deleted deployment stay listed",
                       deployment_runs_api.list_deployment_runs,
                       {"200": "runs", "400": "bad top", "404": "no such deployment and no runs of one"},
                       params=["name"], query=[_TOP], ok_schema=_RUN_LIST),
            "post": _op("Run a stored deployment now", deployment_runs_api.start_deployment_now,
                        {"202": "started", "404": "unknown"}, params=["name"], ok_schema=_ACCEPTED),
        },
        "/api/deployment-runs": {"post": _op(
            "Run a definition given in the body now, without storing it",
            deployment_runs_api.start_inline_deployment,
            {"202": "started", "400": bad}, body=_INLINE_DEFINITION, ok_schema=_ACCEPTED)},
        "/api/deployment-runs/{runId}": {"get": _op(
            "One deployment run and its machines (?status=failed, comma-separated for several)",
            deployment_runs_api.read_deployment_run,
            {"200": "run", "400": "bad status", "404": "unknown run"},
            params=[run_id], query=[_STATUS], ok_schema=_RUN_DETAIL)},
        "/api/deployment-runs/{runId}/cancel": {"post": _op(
            "Stop starting machines; running ones finish, waiting ones are recorded as cancelled",
            deployment_runs_api.cancel_deployment_run,
            {"202": "cancel requested (the run)", "404": "unknown run", "409": "the run has finished"},
            params=[run_id], ok_schema=_RUN)},
        "/api/deployment-runs/{runId}/machines/{machine}": {"get": _op(
            "One machine of a run: result, updates its install reported, links to its step outputs",
            deployment_runs_api.read_deployment_run_machine,
            {"200": "machine", "404": "unknown run or machine", "409": not_unique,
             "500": "a stored install output is unreadable"},
            params=[run_id, machine], ok_schema=_RUN_MACHINE_DETAIL)},
        "/api/deployment-runs/{runId}/machines/{machine}/verdict": {"post": _op(
            "A test system's verdict on a machine whose safety policy waits for one (a verdict check)",
            health_checks.post_verdict,
            {"202": "handed to the machine's deployment", "404": "unknown run or machine",
             "409": "its deployment is not running (NotWaitingForVerdict), or the name is ambiguous"},
            body=Verdict.model_json_schema(), params=[run_id, machine])},
        "/api/deployment-runs/{runId}/machines/{machine}/rollback": {"post": _op(
            "Restore a machine of a run from the snapshots taken right before its install",
            rollback.roll_back_machine,
            {"202": "the rollback started (follow its status)", "404": "unknown run or machine, or no "
             "snapshot was taken of it in that run (NoRestorePoint)", "410": "the snapshots expired "
             "(RestorePointExpired)", "409": "its deployment still runs, a rollback of it runs, it was "
             "restored already, or the name is ambiguous"},
            body=RollbackRequest.model_json_schema(), params=[run_id, machine], ok_schema=_ACCEPTED)},
        "/api/deployment-runs/{runId}/machines/{machine}/outputs/{step}": {"get": _op(
            "The output a step stored (prescan, install1, install2, postscan), as stored",
            deployment_runs_api.read_deployment_run_output,
            {"200": "the stored document", "404": "unknown run, machine or step output", "409": not_unique},
            params=[run_id, machine, ("step", _one_of(STEPS, "a step of the run"))])},
        **_category_paths(bad),
        **_release_paths(bad),
        **_patch_paths(bad),
        **_audit_paths(),
        "/api/deployments/{name}": {
            "get": _op("One update deployment", deployments_api.read_deployment,
                       {"200": "deployment", "404": "unknown"}, params=["name"], ok_schema=_DEPLOYMENT),
            "put": _op("Replace an update deployment (If-Match: ETag optional)",
                       deployments_api.edit_deployment,
                       {"200": "replaced", "400": bad, "404": "unknown", "412": "changed since the ETag",
                        "502": "a group could not be evaluated"},
                       body=_DEFINITION, params=["name"], query=[_IF_MATCH], ok_schema=_DEPLOYMENT),
            "delete": _op("Delete an update deployment", deployments_api.delete_deployment,
                          {"204": "deleted", "404": "unknown"}, params=["name"]),
        },
    }


_PATCH_VIEW = {"$ref": "#/components/schemas/PatchView"}
_APPROVAL_REQUEST = {"$ref": "#/components/schemas/ApprovalRequest"}


def _patch_paths(bad: str) -> dict[str, Any]:
    """The patch inventory and approval routes (functions.patches_api, functions.approvals_api)."""
    os_type = ("osType", _one_of(_OS_NAMES))
    key = ("key", {"type": "string", "minLength": 1,
                   "description": "URL-encoded: KB5034441 (Windows) or name=version (Linux)"})
    request_id = ("id", {"type": "string", "minLength": 1})
    states = [s.value for s in PatchState]
    filters = [_query("osType", _one_of(_OS_NAMES)), _query("category", {"type": "string"}),
               _query("state", _one_of(states, "with category: that category's state")),
               _query("classification", {"type": "string"}, "the display name, ignoring case"),
               _query("approvedAt", {"type": "string", "format": "date-time"},
                      "with category: the updates approved for it at that time (from the history)")]
    listed = {"type": "object", "properties": {"count": {"type": "integer"},
                                               "patches": {"type": "array", "items": _PATCH_VIEW}}}
    requests = {"type": "object", "properties": {"count": {"type": "integer"},
                                                 "requests": {"type": "array", "items": _APPROVAL_REQUEST}}}
    return {
        "/api/patches": {"get": _op(
            "The patch inventory: every update version seen, its state per category (autoApprove rules are "
            "evaluated first)", patches_api.list_patches, {"200": "updates", "400": bad}, query=filters,
            ok_schema=listed)},
        "/api/patches/{osType}/{key}": {
            "get": _op("One update: facts, state per category, history (newest first)",
                       patches_api.read_patch, {"200": "update", "404": "unknown"}, params=[os_type, key],
                       ok_schema=_PATCH_VIEW),
            "patch": _op("Edit an update's facts: impact, references, justification (If-Match optional)",
                         patches_api.edit_patch, {"200": "edited", "404": "unknown",
                                                  "412": "changed since the ETag"},
                         body=FactsEdit.model_json_schema(by_alias=True), params=[os_type, key],
                         query=[{**_IF_MATCH, "description": "the ETag of the update as read"}],
                         ok_schema=_PATCH_VIEW),
        },
        "/api/approvals": {
            "get": _op("Approval requests, newest first (pending: awaiting an approver)",
                       approvals_api.list_approval_requests, {"200": "requests", "400": "bad state"},
                       query=[_query("state", _one_of([s.value for s in RequestState])),
                              _query("category", {"type": "string"})], ok_schema=requests),
            "post": _op("Request approval of updates (or a release's items) that passed in a category",
                        approvals_api.create_approval_request,
                        {"201": "requested (updates already authorized, deferred or approved are left out, "
                                "listed under skipped with their state)",
                         "409": "an update has not passed (InvalidTransition), or every update is already "
                                "requested or approved (AlreadyRequested); error.details lists each"},
                        body=RequestBody.model_json_schema(by_alias=True), ok_schema=_APPROVAL_REQUEST),
        },
        "/api/approvals/{id}": {"get": _op("One approval request", approvals_api.read_approval_request,
                                           {"200": "request", "404": "unknown"}, params=[request_id],
                                           ok_schema=_APPROVAL_REQUEST)},
        "/api/approvals/{id}/decision": {"post": _op(
            "Approve, reject or defer a whole request, or revoke an approved one's approval (its updates are "
            "authorized again, the request pending), with a justification; 403 SeparationOfDuties when the "
            "requester decides", approvals_api.decide_approval_request,
            {"200": "decided", "404": "unknown",
             "409": "decided already (RequestDecided), revoking a request not approved (RequestNotApproved), "
                    "or an update cannot move"},
            body=DecisionBody.model_json_schema(by_alias=True), params=[request_id],
            ok_schema=_APPROVAL_REQUEST)},
    }


def _patch_schemas() -> dict[str, Any]:
    text, nullable_text = {"type": "string"}, {"type": ["string", "null"]}
    moment = {"type": ["string", "null"], "format": "date-time"}
    ref = {"osType": {"enum": _OS_NAMES}, "key": text}
    status = {"type": "object", "properties": {
        "category": text, "state": {"enum": [s.value for s in PatchState]}, "since": moment,
        "by": {**nullable_text, "description": "a principal, system:evidence or rule:<category>"},
        "justification": nullable_text, "deferUntil": moment, "requestedBy": nullable_text,
        "requestId": nullable_text, "evidence": {"type": "object"}}}
    history = {"type": "object", "properties": {
        **ref, "category": text, "at": {"type": "string", "format": "date-time"}, "by": text,
        "action": {"enum": [a.value for a in Action]}, "from": nullable_text, "to": nullable_text,
        "justification": nullable_text, "requestId": nullable_text, "deferUntil": moment}}
    return {
        "PatchView": {"type": "object", "properties": {
            **ref, "kbId": nullable_text, "packageName": nullable_text, "version": nullable_text,
            "title": nullable_text, "classification": nullable_text, "product": nullable_text,
            "firstSeen": moment, "machinesNeedingAtFirstSeen": {"type": ["integer", "null"]},
            "impact": Impact.model_json_schema(by_alias=True), "references": {"type": "array", "items": text},
            "justification": nullable_text, "categories": {"type": "array", "items": status},
            "history": {"type": "array", "items": history}}},
        "ApprovalRequest": {"type": "object", "properties": {
            "id": text, "category": text, "release": nullable_text,
            "patches": {"type": "array", "items": {"type": "object", "properties": ref}},
            "requestedBy": text, "requestedAt": {"type": "string", "format": "date-time"},
            "justification": text, "state": {"enum": [s.value for s in RequestState]},
            "decidedBy": nullable_text, "decidedAt": moment, "decisionJustification": nullable_text,
            "deferUntil": moment, "skipped": {"type": "array", "items": {"type": "object", "properties": {
                **ref, "state": {**nullable_text, "description": "its state when it was left out"},
                "reason": text}}},
            "revocations": {"type": "array", "description": "approvals of the request taken back, oldest "
                            "first", "items": {"type": "object", "properties": {
                "decidedBy": text, "decidedAt": moment, "decisionJustification": nullable_text,
                "revokedBy": text, "revokedAt": moment, "justification": text}}},
            "link": text}},
        "MachineChanges": _changes_schema(),
    }  # fmt: skip


def _changes_schema() -> dict[str, Any]:
    """GET /api/machines/{id}/changes (shared.governance.machine_changes)."""
    text, nullable_text = {"type": "string"}, {"type": ["string", "null"]}
    moment = {"type": ["string", "null"], "format": "date-time"}
    who = {"type": ["object", "null"],
           "properties": {"by": text, "at": moment, "justification": nullable_text}}
    machine_at = {"type": "object", "properties": {"computer": text, "runId": text, "at": moment,
                                                   "reason": text}}
    evidence = {"type": ["object", "null"], "description": "the category's test-ring evidence for the update "
                "(each test machine's latest result) and the evidence rule's verdict now", "properties": {
        "category": text, "testRing": nullable_text, "installed": {"type": "integer"},
        "failed": {"type": "integer"}, "installedOn": {"type": "array", "items": machine_at},
        "failedOn": {"type": "array", "items": machine_at},
        "verdict": {"enum": ["in test", "passed", "failed", None]}, "reason": nullable_text,
        "bakedSince": moment}}
    approval = {"type": "object", "description": "what AuthorizedBy names, from the update's history",
                "properties": {
        "kind": {"enum": ["request", "rule", "test ring", "not required", "unauthorized"]},
        "requestId": text, "rule": text, "link": text, "requested": who,
        "approved": {**who, "description": "the approval in force when it was installed"},
        "revoked": {**who, "description": "the approval taken back since"}}}
    change = {"type": "object", "properties": {
        "at": moment, "osType": {"enum": _OS_NAMES}, "key": text, "kbId": nullable_text,
        "packageName": nullable_text, "version": nullable_text, "title": nullable_text,
        "classification": nullable_text,
        "status": {**nullable_text, "description": "succeeded, failed, notStarted or unknown"},
        "runId": nullable_text, "deployment": nullable_text, "run": nullable_text, "category": text,
        "ring": nullable_text, "authorizedBy": nullable_text, "authorized": {"type": "boolean"},
        "testEvidence": evidence, "approval": approval}}
    return {"type": "object", "properties": {
        "machine": {"type": "object", "properties": {"id": text, "resourceId": nullable_text,
                                                     "computerName": nullable_text, "category": text,
                                                     "ring": nullable_text}},
        "count": {"type": "integer"}, "changes": {"type": "array", "items": change},
        "nextToken": {**nullable_text,
                      "description": "GET again with it for the next page; null at the end"}}}


_CATEGORY = {"$ref": "#/components/schemas/AssetCategory"}
_CATEGORY_VIEW = {"$ref": "#/components/schemas/AssetCategoryView"}
_CATEGORY_IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
                      "description": "the ETag of the category as read; 412 if it changed since"}


_RELEASE = {"$ref": "#/components/schemas/Release"}


def _release_paths(bad: str) -> dict[str, Any]:
    """The release routes (functions.releases_api); a release is immutable: no PUT."""
    listed = {"type": "object", "required": ["count", "releases"], "properties": {
        "count": {"type": "integer"}, "releases": {"type": "array", "items": _RELEASE}}}
    return {
        "/api/releases": {
            "get": _op("List releases (?category= one category's)", releases_api.list_releases,
                       {"200": "releases"}, query=[_query("category", {"type": "string"})], ok_schema=listed),
            "post": _op("Create a release: explicit items, from: passed (what passed testing for the "
                        "category) or from: ring (the versions a ring's machines had installed at a time)",
                        releases_api.create_release,
                        {"201": "created", "400": bad, "409": "name taken (ignoring case)"},
                        body={"$ref": "#/components/schemas/ReleaseRequest"}, ok_schema=_RELEASE),
        },
        "/api/releases/{name}": {
            "get": _op("One release", releases_api.read_release, {"200": "release", "404": "unknown"},
                       params=["name"], ok_schema=_RELEASE),
            "delete": _op("Delete a release no deployment names", releases_api.delete_release,
                          {"204": "deleted", "404": "unknown", "409": "deployments name it (listed)"},
                          params=["name"]),
        },
    }


def _release_schemas() -> dict[str, Any]:
    request = ReleaseRequest.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = request.pop("$defs", {})
    schemas["ReleaseRequest"] = request
    text, moment = {"type": "string"}, {"type": ["string", "null"], "format": "date-time"}
    item = {"type": "object", "required": ["osType", "key"], "properties": {
        "osType": {"enum": _OS_NAMES}, "key": {**text, "description": "KB5034441 or name=version"},
        "kbId": text, "packageName": text, "version": text}}
    schemas["Release"] = {"type": "object", "properties": {
        "name": text, "category": text, "description": text, "items": {"type": "array", "items": item},
        "createdBy": text, "createdAt": moment, "source": {"enum": ["items", "passed", "ring"]},
        "frozenAt": moment, "ring": {"type": ["string", "null"]}}}
    return schemas


def _category_paths(bad: str) -> dict[str, Any]:
    """The asset category routes (functions.categories_api)."""
    listed = {"type": "object", "required": ["count", "categories"], "properties": {
        "count": {"type": "integer"}, "categories": {"type": "array", "items": _CATEGORY_VIEW}}}
    deleted = {"type": "object", "properties": {"deleted": {"type": "string"},
                                                "placement": {"$ref": "#/components/schemas/Placement"}}}
    return {
        "/api/categories": {
            "get": _op("List asset categories, in the order membership is decided (priority, then name)",
                       categories_api.list_categories, {"200": "categories"}, ok_schema=listed),
            "post": _op("Create an asset category; the fleet is re-placed at once",
                        categories_api.create_category,
                        {"201": "created (placement: what re-placing the fleet did)", "400": bad,
                         "409": "name taken (ignoring case), or the category limit reached"},
                        body=_CATEGORY, ok_schema=_CATEGORY_VIEW),
        },
        "/api/categories/{name}": {
            "get": _op("One asset category", categories_api.read_category,
                       {"200": "category", "404": "unknown"}, params=["name"], ok_schema=_CATEGORY_VIEW),
            "put": _op("Replace an asset category (If-Match: ETag optional); the fleet is re-placed when its "
                       "membership, rings or priority changed", categories_api.edit_category,
                       {"200": "replaced", "400": bad, "404": "unknown", "412": "changed since the ETag"},
                       body=_CATEGORY, params=["name"], query=[_CATEGORY_IF_MATCH], ok_schema=_CATEGORY_VIEW),
            "delete": _op("Delete an asset category (If-Match: ETag optional); its machines are re-placed",
                          categories_api.delete_category,
                          {"200": "deleted", "404": "unknown", "412": "changed since the ETag",
                           "409": "CategoryInUse: releases, approval requests awaiting a decision or "
                                  "deployments still name it (listed in error.releases, "
                                  "error.approvalRequests, error.deployments)"},
                          params=["name"], query=[_CATEGORY_IF_MATCH], ok_schema=deleted),
        },
    }


def _category_schemas() -> dict[str, Any]:
    """AssetCategory (the body), its parts, the view the routes answer and the placement report."""
    schema = category_json_schema()
    schemas: dict[str, Any] = schema.pop("$defs", {})
    schemas["AssetCategory"] = schema
    moment = {"type": "string", "format": "date-time"}
    integer = {"type": "integer"}
    schemas["Placement"] = {"type": ["object", "null"], "description": "what re-placing the fleet did and "
                            "cost (null: an edit that moves no machine); error when it could not be done",
                            "properties": {
        "machines": {**integer, "description": "machines read from the inventory"},
        "changed": {**integer, "description": "machines whose category or ring changed (rows written)"},
        "kept": {**integer, "description": "machines left as they were: a saved search they need has no "
                 "result yet"},
        "byCategory": {"type": "object", "additionalProperties": integer},
        "searches": {"type": "object", "properties": {"run": integer, "failed": {
            "type": "object", "additionalProperties": {"type": "string"},
            "description": "saved searches that failed, by category (or category|ring), with why"}}},
        "seconds": {"type": "number"}, "error": {"type": "string"}}}
    schemas["AssetCategoryView"] = {**schema, "title": "AssetCategoryView", "properties": {
        **schema["properties"], "created": moment, "modified": moment,
        "testRing": {"type": "string", "description": "the first ring, where patches are tested"},
        "machines": {"type": "string", "description": "GET this for the category's machines"},
        "placement": {"$ref": "#/components/schemas/Placement"}}}
    return schemas


def _audit_paths() -> dict[str, Any]:
    """The audit route (functions.audit_api)."""
    query = [
        _query("on", {"type": "string", "format": "date"},
               "the day audited (UTC), today or earlier; default today"),
        _query("category", {"type": "string", "minLength": 1, "maxLength": 64},
               "one asset category's machines ('uncategorised': those no category takes)"),
        _query("machine", {"type": "string", "minLength": 1, "description": _MACHINE_NAMES}),
        _query("format", _one_of(list(AUDIT_FORMATS)), "json (default) or csv (one row per machine and "
               "finding, RFC 4180, UTF-8 with a byte order mark)"),
        _query("pageSize", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE,
                            "default": AUDIT_PAGE_SIZE}),
        _query("nextToken", {"type": "string"},
               "the nextToken (CSV: the X-Next-Token header) of the last page"),
    ]
    operation = _op(
        "Installed against authorized, missing and overdue, failed installs: per machine, on a day",
        audit_api.read_audit,
        {"200": "the audit (JSON, or text/csv with format=csv)",
         "400": "bad parameters (error.details lists each)", "404": "no machine or category by that name",
         "409": "the computer name is not unique (error.candidates lists the machines)"},
        query=query)
    operation["responses"]["200"]["content"]["text/csv"] = {"schema": {"type": "string"}}
    return {"/api/audit": {"get": operation}}


def openapi_document() -> dict[str, Any]:
    schema = DeploymentDefinition.model_json_schema(
        by_alias=True, ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = schema.pop("$defs", {})
    schemas["DeploymentDefinition"] = schema
    # POST /api/deployment-runs starts now: its schedule may be left out.
    schemas["InlineDeploymentDefinition"] = {
        **schema, "title": "InlineDeploymentDefinition",
        "required": [name for name in schema.get("required", []) if name != "schedule"],
        "description": "a deployment definition to run now; schedule is optional (the run starts at once)",
    }
    moment = {"type": ["string", "null"], "format": "date-time"}
    # The definition's own properties and what the store adds: not an allOf, since the definition
    # refuses properties it does not name (additionalProperties: false) and so would refuse these.
    schemas["Deployment"] = {**schema, "title": "Deployment", "properties": {**schema["properties"],
        "frozenGroupMembers": {"type": ["array", "null"], "items": {"type": "string"},
                               "maxItems": MAX_MACHINES,
                               "description": "members frozen at creation; null when evaluated per run"},
        "created": moment, "modified": moment,
        "nextRun": {**moment, "description": "the next occurrence of the schedule; null once it has ended"},
        "lastRun": {"oneOf": [{"$ref": "#/components/schemas/DeploymentRun"}, {"type": "null"}]},
        "runs": {"type": "string", "description": "GET this for the deployment's runs"},
        "warnings": {"type": "array", "items": {"type": "string"},
                     "description": "a create or an edit only: what the definition was warned of"},
    }}  # fmt: skip
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"},
            "message": {"type": "string", "description": "the (first) problem"},
            "field": {"type": "string", "description": "the (first) field at fault"},
            "details": {"type": "array", "description": "a 400 for invalid fields: each field with its rule",
                        "items": {"type": "object", "required": ["field", "message"], "properties": {
                            "field": {"type": "string"}, "message": {"type": "string"}}}},
            "candidates": {"type": "array", "description": "a 409 for a computer name several machines "
                           "have: those machines", "items": {"type": "object", "properties": {
                               "id": {"type": "string"}, "resourceId": {"type": "string"},
                               "computerName": {"type": ["string", "null"]}}}},
        }}},
    }
    schemas.update(_run_schemas())
    for name, part in _patch_schemas().items():
        if schemas.setdefault(name, part) != part:
            raise ValueError(f"two schemas named {name} differ: rename one of the models")
    for name, part in _release_schemas().items():
        if schemas.setdefault(name, part) != part:
            raise ValueError(f"two schemas named {name} differ: rename one of the models")
    for name, part in _category_schemas().items():
        if schemas.setdefault(name, part) != part:
            raise ValueError(f"two schemas named {name} differ: rename one of the models")
    return {
        "openapi": "3.1.0",
        "info": {"title": "Patch management API", "version": "1"},
        "paths": _paths(),
        "components": {"schemas": schemas, "securitySchemes": {_SIGNED_IN: {
            "type": "apiKey", "in": "header", "name": PRINCIPAL_HEADER,
            "description": "App Service Authentication (Entra ID) stands in front of the app: it signs the "
                           "caller in and passes the principal, app roles included, in this header (base64 "
                           "JSON). Clients sign in to App Service Authentication and never set the header; "
                           "the app trusts it only behind that front.",
        }}},
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
        "durationText": {**nullable_text, "description": "the duration as people read it: 37 min 53 s"},
        "installed": integer, "failed": integer, "pending": integer, "excluded": integer,
        "rebootStatus": nullable_text, "errorCode": nullable_text, "errorMessage": nullable_text,
        "hint": nullable_text, "outputs": {"type": "array", "items": {"enum": list(STEPS)}},
        "held": {"type": "array", "description": "a deployment of a release: its packages the pre-scan "
                 "offered only at an untested version, not installed",
                 "items": {"type": "object", "properties": {
                     "update": {**text, "description": "name: offered X, tested Y"},
                     "reason": {"const": HELD_REASON}}}},
        "health": {**nullable_text, "description": "what the safety policy's checks found: passed, failed: "
                   "<check>: <why>, unhealthy before install"},
        "rollback": {**nullable_text, "description": "restored, failed or not possible"},
        "restorePoint": {**moment, "description": "when the snapshots it was restored from were taken"},
        "rolledBackAt": moment,
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
