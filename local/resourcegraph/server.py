"""The Resource Graph stand-in over HTTPS: the query endpoint azure-mgmt-resourcegraph calls.

``POST /providers/Microsoft.ResourceGraph/resources?api-version=2021-03-01`` with
``{"subscriptions": [...], "query": "<KQL>", "options": {"$top", "$skip", "$skipToken", "resultFormat"}}``
answers ``{"totalRecords", "count", "resultTruncated", "$skipToken"?, "data", "facets"}`` (REST API
specification, Microsoft.ResourceGraph 2021-03-01, and "Working with large Azure resource data sets"):

* at most 1,000 rows a page (``$top``, 1 to 1,000); a ``$skipToken`` for the next page only when the
  result has an ``id`` column, otherwise the rows past the page are cut and ``resultTruncated`` is
  ``"true"`` ("the query must project the id field in order for pagination to work");
* ``data`` as ``objectArray`` (one object a row, dynamic values as JSON) or ``table`` (the default);
* only the rows of the request's subscriptions (none named: every subscription);
* a quota per caller (the bearer token stands for the user): 15 queries per 5-second window by default,
  reported in every answer as ``x-ms-user-quota-remaining`` and ``x-ms-user-quota-resets-after``
  (``hh:mm:ss``), and a 429 ``RateLimiting`` past it ("Guidance for throttled requests in Azure Resource
  Graph"). The window runs on real time: clients wait it out in real time.

Errors are ARM's ``{"error": {"code", "message", "details"}}``; a query the engine refuses is a 400
``BadRequest`` whose details are ``InvalidQuery`` and the engine's reason, as Resource Graph answers
(the shapes are in ``tests/fixtures/azure/resource-graph-errors.json`` with their sources).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from duckdb_kql.errors import KqlSyntaxError

from local.background_server import BackgroundServer, Reply, ServedStandIn, json_handler
from local.clock import Clock, RealClock
from local.kql import KqlQueryError
from local.resourcegraph.rows import ResourceGraphFeed
from local.resourcegraph.store import ResourceGraphStore, object_row, wire_value
from local.tls import LocalTls

API_VERSIONS = frozenset({"2021-03-01"})  # what azure-mgmt-resourcegraph 8.0.1 sends
# "Resource Graph returns a maximum of 1,000 entries in a single query response" (throttling guidance,
# pagination); $top is 1 to 1000 in the REST specification.
MAX_PAGE_ROWS = 1000
# Without $top: "the default returns 1000 records" with the SDK (Microsoft Q&A 546455); the CLI's own
# default of 100 ("Working with large Azure resource data sets") is the CLI's --first.
DEFAULT_PAGE_ROWS = 1000
# "a user can send at most 15 queries within every 5-second window without being throttled".
QUOTA_QUERIES = 15
QUOTA_WINDOW_SECONDS = 5.0
_PATH = re.compile(r"^/providers/microsoft\.resourcegraph/resources/?$", re.IGNORECASE)
_INVALID_QUERY = (
    "Query is invalid. Please refer to the documentation for the Azure Resource Graph service and fix the "
    "error before retrying."
)
_THROTTLED = (
    "Client application has been throttled and should not attempt to repeat the request until an amount "
    "of time has elapsed. Please see https://aka.ms/resourcegraph-throttling for help."
)



@dataclass(frozen=True)
class Counters:
    """What the stand-in has seen, for tests."""

    queries: int = 0  # answered within the quota (200 or 400)
    throttled: int = 0  # answered 429
    pages_with_token: int = 0  # answers that carried a $skipToken


class _BadRequest(Exception):
    def __init__(self, code: str, message: str, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or []


class Quota:
    """Queries per user and window: the window starts with the user's first query after a reset."""

    def __init__(self, queries: int, window_seconds: float, clock: Callable[[], float]) -> None:
        if queries < 1 or window_seconds <= 0:
            raise ValueError("a quota needs at least one query and a positive window")
        self.queries, self.window = queries, window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._users: dict[str, tuple[float, int]] = {}  # user -> (window end, queries left)

    def take(self, user: str) -> tuple[bool, int, float]:
        """(allowed, queries left after this one, seconds until the window resets)."""
        now = self._clock()
        with self._lock:
            ends, left = self._users.get(user, (0.0, self.queries))
            if now >= ends:
                ends, left = now + self.window, self.queries
            if left <= 0:
                return False, 0, ends - now
            self._users[user] = (ends, left - 1)
            return True, left - 1, ends - now


class ResourceGraphStandIn(ServedStandIn):
    """The Resource Graph query API over HTTPS, backed by a :class:`ResourceGraphStore`."""

    def __init__(
        self,
        tls: LocalTls,
        *,
        clock: Clock | None = None,
        quota_queries: int = QUOTA_QUERIES,
        quota_window_seconds: float = QUOTA_WINDOW_SECONDS,
        quota_clock: Callable[[], float] = time.monotonic,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._clock: Clock = clock or RealClock()
        self.store = ResourceGraphStore(self._clock)
        self.feed = ResourceGraphFeed(self.store)
        self.quota = Quota(quota_queries, quota_window_seconds, quota_clock)
        handler = _handler_for(self)
        self._server = BackgroundServer(handler, name="resourcegraph-standin", host=host, port=port, tls=tls)
        self._lock = threading.Lock()
        self._counters = Counters()

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        super().stop()
        self.store.close()

    @property
    def counters(self) -> Counters:
        with self._lock:
            return self._counters

    def _count(self, **increments: int) -> None:
        with self._lock:
            self._counters = replace(
                self._counters, **{k: getattr(self._counters, k) + v for k, v in increments.items()}
            )

    # -- request handling (no HTTP types, so it can be called directly) ---------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        parts = urlsplit(target)
        path = unquote(parts.path)
        if not _PATH.match(path):
            return _error(404, "NotFound", f"no such route: {method} {path}")
        if method != "POST":
            return _error(405, "MethodNotAllowed", f"{method} {path}: only POST is served here")
        token = _bearer_token(headers)
        if not token:
            message = "Authentication failed. The 'Authorization' header is missing."
            return _error(401, "AuthenticationFailed", message)
        version = (parse_qs(parts.query).get("api-version") or [""])[0]
        if not version:
            return _error(400, "MissingApiVersionParameter", "The api-version query parameter is required.")
        if version not in API_VERSIONS:
            supported = ", ".join(sorted(API_VERSIONS))
            message = f"The api-version '{version}' is invalid. The supported versions are '{supported}'."
            return _error(400, "InvalidApiVersionParameter", message)
        if "application/json" not in _header(headers, "Content-Type").lower():
            # "The Azure Resource Graph REST API only supports a Content-Type of application/json" and
            # answers 500 to others ("Troubleshoot errors using Azure Resource Graph").
            return _error(500, "InternalServerError", "Content-Type must be application/json")
        allowed, left, resets = self.quota.take(token)
        quota_headers = {
            "x-ms-user-quota-remaining": str(left),
            "x-ms-user-quota-resets-after": _hh_mm_ss(resets),
        }
        if not allowed:
            self._count(throttled=1)
            details = [{"code": "RateLimiting", "message": _THROTTLED}]
            return _arg_error(429, "RateLimiting", details, quota_headers)
        self._count(queries=1)
        try:
            answer = self._answer(body)
        except _BadRequest as bad:
            return _arg_error(400, bad.code, bad.details or [{"code": bad.code, "message": bad.message}],
                              quota_headers)  # fmt: skip
        if "$skipToken" in answer:
            self._count(pages_with_token=1)
        return Reply(200, answer, quota_headers)

    def _answer(self, body: bytes) -> dict[str, Any]:
        request = _json_object(body)
        kql = request.get("query")
        if not isinstance(kql, str) or not kql.strip():
            raise _BadRequest("BadRequest", "The request must have a non-empty 'query'.")
        subscriptions = _subscriptions(request.get("subscriptions"))
        if request.get("managementGroups"):
            raise _BadRequest("BadRequest", "managementGroups are not served here: name the subscriptions")
        if request.get("facets"):
            raise _BadRequest("BadRequest", "facets are not served by this stand-in")
        options = request.get("options") or {}
        if not isinstance(options, dict):
            raise _BadRequest("BadRequest", "'options' must be an object")
        top = _option_int(options, "$top", DEFAULT_PAGE_ROWS, 1, MAX_PAGE_ROWS)
        fingerprint = _fingerprint(kql, subscriptions)
        offset = _option_int(options, "$skip", 0, 0, None)
        token = options.get("$skipToken")
        if token and "$skip" not in options:  # "$skip ... overrides the next page offset" of a token
            offset = _token_offset(token, fingerprint)
        result_format = options.get("resultFormat", "table")
        if result_format not in ("table", "objectArray"):
            message = f"resultFormat must be 'table' or 'objectArray', got {result_format!r}"
            raise _BadRequest("BadRequest", message)
        try:
            found = self.store.run(kql, subscriptions)
        except KqlQueryError as exc:
            reason = "ParserFailure" if isinstance(exc.__cause__, KqlSyntaxError) else "InvalidQuery"
            details = [
                {"code": "InvalidQuery", "message": _INVALID_QUERY}, {"code": reason, "message": str(exc)},
            ]
            raise _BadRequest("BadRequest", _INVALID_QUERY, details) from exc
        total = len(found.rows)
        page = found.rows[offset:offset + top]
        more = offset + len(page) < total
        pageable = any(name == "id" for name, _ in found.columns)
        answer: dict[str, Any] = {
            "totalRecords": total,
            "count": len(page),
            "resultTruncated": "true" if more and not pageable else "false",
        }
        if more and pageable:
            answer["$skipToken"] = _token(offset + len(page), fingerprint)
        if result_format == "objectArray":
            answer["data"] = [object_row(found.columns, row) for row in page]
        else:
            answer["data"] = {
                "columns": [{"name": name, "type": _column_type(kind)} for name, kind in found.columns],
                "rows": [[wire_value(v, kind) for v, (_, kind) in zip(row, found.columns, strict=True)]
                         for row in page],
            }  # fmt: skip
        answer["facets"] = []
        return answer


# -- helpers -----------------------------------------------------------------------------------------


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message}}, headers)


def _arg_error(status: int, code: str, details: list[dict[str, str]], headers: Mapping[str, str]) -> Reply:
    """Resource Graph's error: a support line on top, the reasons in ``details``."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
    support = (
        f"Please provide below info when asking for support: timestamp = {stamp}, "
        f"correlationId = {uuid.uuid4()}."
    )
    return Reply(status, {"error": {"code": code, "message": support, "details": details}}, headers)


def _header(headers: Mapping[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")


def _bearer_token(headers: Mapping[str, str]) -> str:
    scheme, _, token = _header(headers, "Authorization").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _hh_mm_ss(seconds: float) -> str:
    whole = max(0, math.ceil(seconds))
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        request = json.loads(body or b"{}")
    except ValueError as exc:
        raise _BadRequest("BadRequest", f"The request body is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise _BadRequest("BadRequest", "The request body must be a JSON object.")
    return request


def _subscriptions(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise _BadRequest("BadRequest", "'subscriptions' must be a list of subscription ids")
    return value


def _option_int(options: Mapping[str, Any], name: str, default: int, low: int, high: int | None) -> int:
    value = options.get(name, default)
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not whole or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise _BadRequest("BadRequest", f"options.{name} must be a whole number {bounds}, got {value!r}")
    return value


def _fingerprint(kql: str, subscriptions: Sequence[str] | None) -> str:
    scope = ",".join(sorted(s.lower() for s in subscriptions)) if subscriptions is not None else "*"
    return hashlib.sha256(f"{scope}\n{kql}".encode()).hexdigest()[:16]


def _token(offset: int, fingerprint: str) -> str:
    """Opaque to clients: the next row and the query it belongs to."""
    text = json.dumps({"rowsToSkip": offset, "query": fingerprint})
    return base64.urlsafe_b64encode(text.encode()).decode()


def _token_offset(token: Any, fingerprint: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(str(token).encode()))
        offset, query = data["rowsToSkip"], data["query"]
    except (ValueError, KeyError, TypeError):
        raise _BadRequest("BadRequest", "options.$skipToken is not a token this service gave") from None
    if query != fingerprint or not isinstance(offset, int) or offset < 0:
        # "passed to a subsequent query call (together with the same query and scopes ...)" (specification)
        raise _BadRequest("BadRequest", "options.$skipToken belongs to another query or other subscriptions")
    return offset


def _column_type(kind: str) -> str:
    return {"long": "integer", "int": "integer", "real": "number", "decimal": "number", "bool": "boolean",
            "dynamic": "object"}.get(kind, kind)  # fmt: skip


# -- HTTP ----------------------------------------------------------------------------------------------


def _handler_for(standin: ResourceGraphStandIn) -> type[BaseHTTPRequestHandler]:
    return json_handler(standin.handle)
