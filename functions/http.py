"""Shared plumbing of the HTTP functions: JSON responses, errors, request bodies, and role checks."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

import azure.functions as func
from azure.core.exceptions import AzureError, HttpResponseError
from pydantic import ValidationError

from shared.fleet.machine_names import (
    MachineDirectory,
    MachineEntry,
    MachineNameNotUnique,
    MachineNotFound,
    resolve_machine,
)
from shared.principal import PRINCIPAL_HEADER, NotSignedIn, Principal, Role, parse_principal
from shared.settings import AuthenticationFront, authentication_front

Handler = TypeVar("Handler", bound=Callable[..., Any])
Parsed = TypeVar("Parsed")
# A handler that declares this parameter is given the signed-in caller (a Principal).
PRINCIPAL_PARAMETER = "principal"
log = logging.getLogger(__name__)

# The largest valid body is a deployment definition of 10,000 machines, at most MAX_DEFINITION_CHARS
# (3,000,000) characters as stored; 4 MiB leaves room for a client's indentation. A bigger body is a
# mistake or an attack (the Functions host itself would accept 100 MB).
MAX_BODY_BYTES = 4 * 1_048_576
# The deepest valid body (a definition's targets.groups[].filter.tags) nests 6 levels; 32 leaves room
# and keeps json and pydantic far from Python's recursion limit (10,000 nested arrays raise RecursionError).
MAX_JSON_DEPTH = 32
# A string (closing quote optional: an unterminated one is consumed once, never rescanned) or a bracket.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]')
# ``@requires`` records its role on the guarded function under this name (read by the OpenAPI document).
_ROLE_ATTRIBUTE = "required_role"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, default=str, indent=None),
        status_code=status,
        mimetype="application/json",
        headers=headers,
    )


def error_response(status: int, code: str, message: str, field: str | None = None,
                   details: Iterable[tuple[str, str]] | None = None) -> func.HttpResponse:
    """``{"error": {code, message, field}}``; ``details`` lists every field at fault with its rule
    (``field`` and ``message`` then describe the first)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    if details is not None:
        error["details"] = [{"field": at, "message": rule} for at, rule in details]
    return json_response({"error": error}, status)


def invalid_fields(error: ValueError) -> func.HttpResponse:
    """The 400 for a ValueError naming its ``field`` (and, when it has them, its ``details``: every
    field at fault), such as shared.deployments.definition.DefinitionError."""
    at: str = getattr(error, "field", None) or "body"
    details = getattr(error, "details", None) or ((at, getattr(error, "message", None) or str(error)),)
    return error_response(400, "InvalidField", str(error), at, details)


def find_machine(directory: MachineDirectory, given: str, where: str) -> MachineEntry | func.HttpResponse:
    """The machine ``given`` names (key, URL-encoded resource id or computer name), or its 404 / 409."""
    try:
        return resolve_machine(directory, given, where)
    except MachineNotFound as error:
        return machine_not_found(error)
    except MachineNameNotUnique as error:
        body = {"error": {"code": "MachineNameNotUnique", "message": str(error),
                          "candidates": [c.to_json() for c in error.candidates]}}
        return json_response(body, 409)


def machine_not_found(error: MachineNotFound) -> func.HttpResponse:
    return error_response(404, "MachineNotFound", str(error))


def run_accepted(run_id: str) -> func.HttpResponse:
    """202 for a started run, pointing at the app's own status route (never Durable's system URLs)."""
    status = f"/api/runs/{run_id}"
    return json_response({"runId": run_id, "status": status}, 202, headers={"Location": status})


def read_json(
    req: func.HttpRequest, parse: Callable[[Any], Parsed], *, if_empty: Any = None
) -> Parsed | func.HttpResponse:
    """The request body through every check, in order, or the response naming the first that fails.

    Size (413 beyond :data:`MAX_BODY_BYTES`), UTF-8, nesting depth (:data:`MAX_JSON_DEPTH`), strict JSON,
    then ``parse`` (the typed model) given the decoded value, or ``if_empty`` for an empty body. ``parse``
    raises pydantic's ValidationError or a ValueError with a ``field`` (and ``details``, every field at
    fault); one that also has ``too_large`` set (a value too big to store) is a 413. A 400 for the
    body's fields lists each of them in ``error.details``.
    """
    body = req.get_body() or b""
    if len(body) > MAX_BODY_BYTES:
        message = f"request body is {len(body):,} bytes; at most {MAX_BODY_BYTES:,} are accepted"
        return error_response(413, "BodyTooLarge", message)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        message = f"request body is not UTF-8 (byte {error.start} is invalid)"
        return error_response(400, "InvalidEncoding", message)
    if not text.strip():
        value = if_empty
    else:
        if _too_deep(text):
            return error_response(
                400, "JsonTooDeep", f"request body nests arrays or objects more than {MAX_JSON_DEPTH} deep"
            )
        try:
            value = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError:
            return error_response(
                400, "JsonTooDeep", f"request body nests arrays or objects more than {MAX_JSON_DEPTH} deep"
            )
        except ValueError as error:  # JSONDecodeError, NaN/Infinity, integers of more than 4,300 digits
            return error_response(400, "InvalidJson", f"request body is not JSON: {error}")
    try:
        return parse(value)
    except ValidationError as error:
        details = [(".".join(str(p) for p in e["loc"]) or "body", str(e["msg"])) for e in error.errors()]
        details = list(dict.fromkeys(details))
        field, rule = details[0]
        return error_response(400, "InvalidField", f"{field}: {rule}", field, details)
    except ValueError as error:
        at: str | None = getattr(error, "field", None)
        if at is None:
            raise
        if getattr(error, "too_large", False):
            return error_response(413, "TooLargeToStore", str(error), at)
        return invalid_fields(error)


def _too_deep(text: str) -> bool:
    """Whether brackets outside strings nest beyond MAX_JSON_DEPTH, counted without recursion."""
    depth = 0
    for token in _JSON_TOKEN.finditer(text):
        if token[0] in ("[", "{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif token[0] in ("]", "}"):
            depth -= 1
    return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _storage_failure(error: AzureError) -> func.HttpResponse:
    """A storage (or other Azure SDK) error the handler did not expect: logged, never shown raw."""
    code = getattr(error, "error_code", None)
    log.error("storage error answered as a 503: %s", error, exc_info=error)
    detail = f" ({code})" if code else ""
    if isinstance(error, HttpResponseError) and error.status_code == 413:
        return error_response(413, "TooLargeToStore", f"storage refused the request as too large{detail}")
    return error_response(
        503, "StorageUnavailable", f"the app's storage could not complete the request{detail}; try again"
    )


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
                if refused is not None:
                    return refused
                try:
                    return await handler(*args, **kwargs)
                except AzureError as error:
                    return _storage_failure(error)

        else:

            @functools.wraps(handler)
            def guarded(*args: Any, **kwargs: Any) -> Any:
                refused = refusal(args, kwargs)
                if refused is not None:
                    return refused
                try:
                    return handler(*args, **kwargs)
                except AzureError as error:
                    return _storage_failure(error)

        setattr(guarded, _ROLE_ATTRIBUTE, role)
        if gives_principal:
            bindings = [p for p in signature.parameters.values() if p.name != PRINCIPAL_PARAMETER]
            guarded.__signature__ = signature.replace(parameters=bindings)  # type: ignore[attr-defined]
            guarded.__annotations__ = {
                name: hint for name, hint in handler.__annotations__.items() if name != PRINCIPAL_PARAMETER
            }
        return cast(Handler, guarded)

    return decorate


def user_function(handler: Any) -> Callable[..., Any]:
    """The function itself, given it or the FunctionBuilder its module name holds after ``@bp.route``."""
    built = getattr(handler, "_function", None)  # azure.functions FunctionBuilder keeps the function here
    return cast(Callable[..., Any], built.get_user_function() if built is not None else handler)


def required_role(handler: Any) -> Role | None:
    """The role ``@requires`` recorded on ``handler`` (see :func:`user_function`); None if it is public."""
    role = getattr(user_function(handler), _ROLE_ATTRIBUTE, None)
    return role if isinstance(role, Role) else None


def _caller(req: func.HttpRequest, role: Role) -> Principal | func.HttpResponse:
    """The signed-in principal if it holds ``role``; otherwise the 401/403 response to return."""
    front = authentication_front()
    _log_front_once(front)
    if front is AuthenticationFront.NONE:
        return error_response(401, "AuthenticationOff", _NO_FRONT)
    try:
        principal = parse_principal(req.headers.get(PRINCIPAL_HEADER))
    except NotSignedIn as error:
        return error_response(401, "NotSignedIn", str(error))
    if not principal.has(role):
        return error_response(403, "Forbidden", f"{principal.name} lacks the app role {role.value}")
    return principal


_NO_FRONT = (
    f"App Service Authentication is not enabled in front of this app (WEBSITE_AUTH_ENABLED is not True), so "
    f"no {PRINCIPAL_HEADER} header can be trusted: every protected route answers 401 until it is enabled"
)
_front_logged: list[AuthenticationFront] = []  # the front last logged, so it is logged once per process


def _log_front_once(front: AuthenticationFront) -> None:
    """Say at the first request (and if it ever changes) who signs callers in, or why nobody can."""
    if _front_logged and _front_logged[-1] is front:
        return
    _front_logged[:] = [front]
    if front is AuthenticationFront.NONE:
        log.error("refusing every protected route: %s", _NO_FRONT)
    else:
        log.info("callers are signed in by %s", front.value)
