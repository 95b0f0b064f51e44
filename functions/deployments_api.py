"""Update deployment definitions over HTTP: create, list, get, edit, delete (`/api/deployments`).

Reading needs the Reader role, writing the Operator role. Every invalid field is a 400 naming the
field; nothing is stored from an invalid request. Edits carry an ETag: the request's ``If-Match``
when given, else the one read just before the write (so two edits never silently overwrite).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from functions.http import error_response, invalid_fields, json_response, read_json, requires
from shared.azure.credentials import credential_for
from shared.deployments.definition import DefinitionError, DeploymentDefinition, admit, validate_definition
from shared.deployments.definitions_table import (
    DeploymentExists,
    DeploymentNotFound,
    DeploymentStore,
    EditConflict,
    StoredDeployment,
    deployment_store,
)
from shared.deployments.governed import enforcement
from shared.deployments.groups import GroupEvaluationError, frozen_members
from shared.deployments.runs_table import RunStore, run_store
from shared.deployments.schedule import next_occurrence
from shared.governance.enforcement import APPROVAL_RULE
from shared.principal import Role
from shared.settings import Settings, load_settings

bp = df.Blueprint()


def _store(settings: Settings) -> DeploymentStore:
    return deployment_store(settings)


def _parse(req: func.HttpRequest) -> DeploymentDefinition | func.HttpResponse:
    return read_json(req, validate_definition)


def _admit(definition: DeploymentDefinition, settings: Settings) -> list[str] | func.HttpResponse:
    """The definition's warnings, or a 400 when it could never work (see ``admit``)."""
    try:
        return admit(definition, datetime.now(UTC), settings.target_subscription_ids)
    except DefinitionError as error:
        return invalid_fields(error)


def _members(
    definition: DeploymentDefinition, settings: Settings
) -> tuple[str, ...] | func.HttpResponse | None:
    try:
        return frozen_members(definition, settings, credential_for(settings))
    except DefinitionError as error:
        return invalid_fields(error)
    except GroupEvaluationError as error:
        return error_response(502, "GroupEvaluationFailed", str(error), "targets.groups")


def enforcement_refusal(definition: DeploymentDefinition, members: tuple[str, ...] | None,
             settings: Settings) -> func.HttpResponse | None:
    """The 400 when the definition breaks the approval rule or names a release it cannot use
    (shared.deployments.governed.enforcement), else None."""
    problems = enforcement(settings, definition, [*definition.targets.machines, *(members or ())])
    if not problems:
        return None
    code = APPROVAL_RULE if any(p.message.startswith(APPROVAL_RULE) for p in problems) else "InvalidField"
    first = problems[0]
    return error_response(400, code, f"{first.field}: {first.message}", first.field,
                          [(p.field, p.message) for p in problems])


def _view(stored: StoredDeployment, runs: RunStore, now: datetime) -> dict[str, Any]:
    """The definition as stored, plus when it runs next and how its last run went."""
    name = stored.definition.name
    upcoming = next_occurrence(stored.definition.schedule, now)
    last = runs.latest(name)
    return stored.to_json() | {
        "nextRun": upcoming.isoformat() if upcoming else None,
        "lastRun": None if last is None else last.to_json() | {"link": f"/api/deployment-runs/{last.run_id}"},
        "runs": f"/api/deployments/{name}/runs",
    }


def _stored_response(stored: StoredDeployment, settings: Settings, status: int = 200,
                     warnings: list[str] | None = None) -> func.HttpResponse:
    """The view; a create or an edit (``warnings`` given) also answers what it was warned of."""
    headers = {"ETag": stored.etag}
    if status == 201:
        headers["Location"] = f"/api/deployments/{stored.definition.name}"
    view = _view(stored, run_store(settings), datetime.now(UTC))
    if warnings is not None:
        view["warnings"] = warnings
    return json_response(view, status, headers=headers)


def _not_found(name: str) -> func.HttpResponse:
    return error_response(404, "DeploymentNotFound", f"no deployment named {name!r}")


@bp.route(route="deployments", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.OPERATOR)
def create_deployment(req: func.HttpRequest) -> func.HttpResponse:
    definition = _parse(req)
    if isinstance(definition, func.HttpResponse):
        return definition
    settings = load_settings()
    warnings = _admit(definition, settings)
    if isinstance(warnings, func.HttpResponse):
        return warnings
    members = _members(definition, settings)
    if isinstance(members, func.HttpResponse):
        return members
    refused = enforcement_refusal(definition, members, settings)
    if refused is not None:
        return refused
    try:
        stored = _store(settings).create(definition, members, datetime.now(UTC))
    except DeploymentExists as error:
        return error_response(409, "DeploymentExists", str(error), "name")
    return _stored_response(stored, settings, 201, warnings)


@bp.route(route="deployments", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def list_deployments(req: func.HttpRequest) -> func.HttpResponse:
    settings = load_settings()
    deployments = _store(settings).list()
    runs, now = run_store(settings), datetime.now(UTC)
    views = [_view(d, runs, now) for d in deployments]
    return json_response({"count": len(views), "deployments": views})


@bp.route(route="deployments/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def read_deployment(req: func.HttpRequest) -> func.HttpResponse:
    name = req.route_params.get("name", "")
    try:
        settings = load_settings()
        return _stored_response(_store(settings).get(name), settings)
    except DeploymentNotFound:
        return _not_found(name)


@bp.route(route="deployments/{name}", methods=["PUT"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.OPERATOR)
def edit_deployment(req: func.HttpRequest) -> func.HttpResponse:
    """Replace a definition. Group membership frozen at creation is kept unless the targets change."""
    name = req.route_params.get("name", "")
    definition = _parse(req)
    if isinstance(definition, func.HttpResponse):
        return definition
    if definition.name.lower() != name.lower():
        message = f"name: must be {name!r} as in the URL; to rename, create a new one and delete this one"
        return error_response(400, "InvalidField", message, "name")
    settings = load_settings()
    warnings = _admit(definition, settings)
    if isinstance(warnings, func.HttpResponse):
        return warnings
    store = _store(settings)
    try:
        current = store.get(name)
    except DeploymentNotFound:
        return _not_found(name)
    members = current.frozen_members
    if definition.targets != current.definition.targets or members is None:
        evaluated = _members(definition, settings)
        if isinstance(evaluated, func.HttpResponse):
            return evaluated
        members = evaluated
    refused = enforcement_refusal(definition, members, settings)
    if refused is not None:
        return refused
    try:
        stored = store.replace(current, definition, members, req.headers.get("If-Match") or current.etag,
                               datetime.now(UTC))
    except DeploymentNotFound:
        return _not_found(name)
    except EditConflict as error:
        return error_response(412, "EditConflict", f"{error}; read it again and reapply the edit")
    return _stored_response(stored, settings, warnings=warnings)


@bp.route(route="deployments/{name}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.OPERATOR)
def delete_deployment(req: func.HttpRequest) -> func.HttpResponse:
    name = req.route_params.get("name", "")
    try:
        _store(load_settings()).delete(name)
    except DeploymentNotFound:
        return _not_found(name)
    return func.HttpResponse(status_code=204)
