"""Approval requests over HTTP (`/api/approvals`): an operator requests, an approver decides, a reader reads.

``POST /api/approvals`` (Operator): ``{category, patches: [keys] | release, justification}``; every update
must have passed testing in the category; 201 with the request. ``POST /api/approvals/{id}/decision``
(Approver): ``{decision: approve|reject|defer|revoke, justification, deferUntil}`` decides the whole
request (``revoke`` takes an approved request's approval back); the requester gets 403
``SeparationOfDuties``. ``GET /api/approvals?state=pending&category=`` and
``GET /api/approvals/{id}`` (Reader). Reading evaluates the categories' automatic approval rules first.
"""

from __future__ import annotations

from datetime import UTC, datetime

import azure.durable_functions as df
import azure.functions as func

from functions.http import error_response, invalid_fields, json_response, read_json, requires
from shared.governance.approvals import (
    ApprovalBodyError,
    ApprovalRefused,
    decide,
    evaluate_auto_rules,
    list_requests,
    parse_decision,
    parse_request,
    request_approval,
)
from shared.governance.approvals_table import RequestNotFound, RequestState, approval_store
from shared.governance.patches import InvalidTransition, TransitionRefused
from shared.principal import Principal, Role
from shared.settings import load_settings

bp = df.Blueprint()

_STATES = [s.value for s in RequestState]


def refusal_response(error: TransitionRefused | ApprovalRefused | ApprovalBodyError) -> func.HttpResponse:
    """The answer to a refused request or decision: 400 naming the field(s), 403 naming the rule of who may
    act (SeparationOfDuties, ActorNotAllowed), 409 for a state that does not allow it."""
    if isinstance(error, ApprovalBodyError):
        return invalid_fields(error)
    if isinstance(error, ApprovalRefused):
        return error_response(error.status, error.rule, error.message, error.field, error.details or None)
    if error.field is not None:
        return error_response(400, "InvalidField", error.message, error.field, [(error.field, error.message)])
    status = 409 if isinstance(error, InvalidTransition) else 403
    return error_response(status, error.rule, error.message)


def _not_found(request_id: str) -> func.HttpResponse:
    return error_response(404, "ApprovalRequestNotFound", f"no approval request {request_id!r}")


@bp.route(route="approvals", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.OPERATOR)
def create_approval_request(req: func.HttpRequest, principal: Principal) -> func.HttpResponse:
    parsed = read_json(req, parse_request)
    if isinstance(parsed, func.HttpResponse):
        return parsed
    try:
        request = request_approval(load_settings(), parsed, principal, datetime.now(UTC))
    except (TransitionRefused, ApprovalRefused) as error:
        return refusal_response(error)
    link = f"/api/approvals/{request.request_id}"
    return json_response(request.to_json(), 201, headers={"Location": link})


@bp.route(route="approvals", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def list_approval_requests(req: func.HttpRequest) -> func.HttpResponse:
    state = req.params.get("state") or None
    if state is not None and state not in _STATES:
        return error_response(400, "InvalidField", f"state: one of {', '.join(_STATES)}", "state")
    settings, now = load_settings(), datetime.now(UTC)
    evaluate_auto_rules(settings, now)
    requests = list_requests(settings, state, req.params.get("category") or None, now)
    return json_response({"count": len(requests), "requests": [r.to_json() for r in requests]})


@bp.route(route="approvals/{id}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def read_approval_request(req: func.HttpRequest) -> func.HttpResponse:
    request_id = req.route_params.get("id", "")
    try:
        return json_response(approval_store(load_settings()).get(request_id).to_json())
    except RequestNotFound:
        return _not_found(request_id)


@bp.route(route="approvals/{id}/decision", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.APPROVER)
def decide_approval_request(req: func.HttpRequest, principal: Principal) -> func.HttpResponse:
    request_id = req.route_params.get("id", "")
    decision = read_json(req, parse_decision)
    if isinstance(decision, func.HttpResponse):
        return decision
    try:
        request = decide(load_settings(), request_id, decision, principal, datetime.now(UTC))
    except RequestNotFound:
        return _not_found(request_id)
    except (TransitionRefused, ApprovalRefused) as error:
        return refusal_response(error)
    return json_response(request.to_json())
