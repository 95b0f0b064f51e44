"""Shared plumbing of the HTTP functions: JSON responses, errors, and role checks."""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func

from shared.principal import PRINCIPAL_HEADER, NotSignedIn, Principal, Role, parse_principal


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, default=str, indent=None),
        status_code=status,
        mimetype="application/json",
        headers=headers,
    )


def error_response(status: int, code: str, message: str, field: str | None = None) -> func.HttpResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    return json_response({"error": error}, status)


def run_accepted(run_id: str) -> func.HttpResponse:
    """202 for a started run, pointing at the app's own status route (never Durable's system URLs)."""
    status = f"/api/runs/{run_id}"
    return json_response({"runId": run_id, "status": status}, 202, headers={"Location": status})


def require_role(req: func.HttpRequest, role: Role) -> Principal | func.HttpResponse:
    """The signed-in principal if it holds ``role``; otherwise the 401/403 response to return."""
    try:
        principal = parse_principal(req.headers.get(PRINCIPAL_HEADER))
    except NotSignedIn as error:
        return error_response(401, "NotSignedIn", str(error))
    if not principal.has(role):
        return error_response(403, "Forbidden", f"{principal.name} lacks the app role {role.value}")
    return principal
