"""Shared plumbing of the HTTP functions: JSON responses, errors, and role checks."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from typing import Any, TypeVar, cast

import azure.functions as func

from shared.principal import PRINCIPAL_HEADER, NotSignedIn, Principal, Role, parse_principal

Handler = TypeVar("Handler", bound=Callable[..., Any])
# A handler that declares this parameter is given the signed-in caller (a Principal).
PRINCIPAL_PARAMETER = "principal"


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


def requires(role: Role) -> Callable[[Handler], Handler]:
    """Answer 401 (not signed in) or 403 (lacks ``role``) before the handler runs, sync or async.

    A handler that declares a ``principal`` parameter is given the caller. The Functions worker binds
    arguments by parameter name, so the worker sees the handler's signature without ``principal``
    (only its bindings: ``req``, ``client``). Goes below ``@bp.route`` and ``@bp.durable_client_input``,
    so the function they register is the guarded one.
    """

    def decorate(handler: Handler) -> Handler:
        signature = inspect.signature(handler)
        gives_principal = PRINCIPAL_PARAMETER in signature.parameters

        def refusal(args: tuple[Any, ...], kwargs: dict[str, Any]) -> func.HttpResponse | None:
            request = next(a for a in (*args, *kwargs.values()) if isinstance(a, func.HttpRequest))
            caller = _caller(request, role)
            if isinstance(caller, func.HttpResponse):
                return caller
            if gives_principal:
                kwargs[PRINCIPAL_PARAMETER] = caller
            return None

        guarded: Callable[..., Any]
        if inspect.iscoroutinefunction(handler):

            @functools.wraps(handler)
            async def guarded(*args: Any, **kwargs: Any) -> Any:
                refused = refusal(args, kwargs)
                return refused if refused is not None else await handler(*args, **kwargs)

        else:

            @functools.wraps(handler)
            def guarded(*args: Any, **kwargs: Any) -> Any:
                refused = refusal(args, kwargs)
                return refused if refused is not None else handler(*args, **kwargs)

        if gives_principal:
            bindings = [p for p in signature.parameters.values() if p.name != PRINCIPAL_PARAMETER]
            guarded.__signature__ = signature.replace(parameters=bindings)  # type: ignore[attr-defined]
            guarded.__annotations__ = {
                name: hint for name, hint in handler.__annotations__.items() if name != PRINCIPAL_PARAMETER
            }
        return cast(Handler, guarded)

    return decorate


def _caller(req: func.HttpRequest, role: Role) -> Principal | func.HttpResponse:
    """The signed-in principal if it holds ``role``; otherwise the 401/403 response to return."""
    try:
        principal = parse_principal(req.headers.get(PRINCIPAL_HEADER))
    except NotSignedIn as error:
        return error_response(401, "NotSignedIn", str(error))
    if not principal.has(role):
        return error_response(403, "Forbidden", f"{principal.name} lacks the app role {role.value}")
    return principal
