"""The Log Analytics stand-in over HTTPS: the Logs Ingestion API and the Logs Query API on one port.

The app talks to it with the real ``azure-monitor-ingestion`` and ``azure-monitor-query``
clients: ingestion endpoint = :attr:`LogAnalyticsStandIn.base_url`, query endpoint =
``base_url + "/v1"``. Routes, as those clients build them:

* ``POST /dataCollectionRules/{dcrImmutableId}/streams/{stream}?api-version=...`` (JSON array,
  gzipped or not) -> 204;
* ``POST /v1/workspaces/{workspaceId}/query`` ``{"query", "timespan"?}`` -> 200 tables;
* ``POST /v1/$batch`` ``{"requests": [{"id", "workspace", "body"}]}`` -> 200 responses
  (what ``LogsQueryClient.query_batch`` sends).

Every route requires a bearer token (any non-empty token: there is no identity here).
Error bodies are ``{"error": {"code", "message"}}``, which azure-core turns into an
``HttpResponseError`` carrying the message.
"""

from __future__ import annotations

import json
import math
import re
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

from local.background_server import BackgroundServer, Reply, ServedStandIn, json_handler
from local.clock import Clock, RealClock
from local.loganalytics.store import (
    MAX_QUERY_ROWS,
    KqlQueryError,
    LogStore,
    QueryResult,
    RowRejected,
    StoreBusy,
    TimeRange,
)
from local.tls import LocalTls
from shared.log_tables import TABLES, LogFunction, LogTable

# Logs Ingestion API: at most 1 MB per call, compressed and uncompressed ("Azure Monitor
# service limits", Logs Ingestion API). azure-monitor-ingestion splits uploads so that the
# records of one call, each serialized on its own, stay within 1 MiB; the uncompressed size
# is measured the same way, so the client's own chunks are never refused.
MAX_REQUEST_BYTES = 1024 * 1024
# A gzip body may not inflate past this; a bigger one is refused before it is parsed.
_MAX_INFLATED_BYTES = 4 * MAX_REQUEST_BYTES
_STORE_BUSY_RETRY_SECONDS = 1

_INGEST_PATH = re.compile(r"^/dataCollectionRules/(?P<rule>[^/]+)/streams/(?P<stream>[^/]+)/?$")
_QUERY_PATH = re.compile(r"^/v1/workspaces/(?P<workspace>[^/]+)/query/?$")
_BATCH_PATH = re.compile(r"^/v1/\$batch/?$")
# ISO 8601 durations as the query API takes them (azure-monitor-query sends "PT<seconds>S").
_DURATION = re.compile(
    r"^P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


class BadTimespan(ValueError):
    pass


@dataclass(frozen=True)
class Counters:
    """What the stand-in has seen, for tests."""

    ingestion_requests: int = 0
    rows_ingested: int = 0
    rejected_requests: int = 0  # answered 4xx other than 429
    throttled_requests: int = 0  # answered 429 by throttle_next
    query_requests: int = 0



def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message}}, headers)


class LogAnalyticsStandIn(ServedStandIn):
    """Logs Ingestion + Logs Query over HTTPS, backed by a :class:`LogStore`.

    ``db_path=None`` keeps the data in memory; with a path, the DuckDB file outlives the
    server and is opened only while a request is served (see :mod:`local.loganalytics.store`).
    """

    def __init__(
        self,
        db_path: Path | None,
        tls: LocalTls,
        *,
        workspace_id: str,
        dcr_immutable_id: str,
        tables: tuple[LogTable, ...] | list[LogTable] = TABLES,
        functions: tuple[LogFunction, ...] | list[LogFunction] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        row_limit: int = MAX_QUERY_ROWS,
    ) -> None:
        self._clock: Clock = clock or RealClock()
        self.store = LogStore(db_path, tables, functions=functions, clock=self._clock, row_limit=row_limit)
        self._tls = tls
        self.workspace_id = workspace_id
        self.dcr_immutable_id = dcr_immutable_id
        self._server = BackgroundServer(
            _handler_for(self), name="loganalytics-standin", host=host, port=port, tls=tls
        )
        self._lock = threading.Lock()
        self._counters = Counters()
        self._throttle_remaining = 0
        self._throttle_retry_after = 0.0
        self._outage_until: datetime | None = None
        self._outage_status = 503

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        super().stop()
        self.store.close()

    # -- test and CLI hooks ----------------------------------------------------------------

    def query(self, kql: str, timespan: TimeRange | None = None) -> list[dict[str, Any]]:
        """Run KQL directly (no HTTP), as ``python -m local query`` does."""
        return self.store.query(kql, timespan)

    def throttle_next(self, count: int, retry_after_seconds: float = 1.0) -> None:
        """Answer the next ``count`` ingestion requests 429 with ``Retry-After``."""
        if count < 0 or retry_after_seconds < 0:
            raise ValueError("throttle_next needs count >= 0 and retry_after_seconds >= 0")
        with self._lock:
            self._throttle_remaining = count
            self._throttle_retry_after = retry_after_seconds

    def ingestion_outage_until(self, moment: datetime | None, status: int = 503) -> None:
        """Answer every ingestion request ``status`` (503 ServiceUnavailable or 429 TooManyRequests, with
        ``Retry-After: 1``) until ``moment`` on the stand-in's clock; ``None`` ends the outage."""
        if status not in (429, 503):
            raise ValueError("an outage answers 429 or 503")
        with self._lock:
            self._outage_until, self._outage_status = moment, status

    @property
    def counters(self) -> Counters:
        with self._lock:
            return self._counters

    def _count(self, **increments: int) -> None:
        with self._lock:
            self._counters = replace(
                self._counters, **{k: getattr(self._counters, k) + v for k, v in increments.items()}
            )

    # -- request handling (no HTTP types, so it can be called directly) --------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        path = unquote(urlsplit(target).path)
        if method != "POST":
            return _error(405, "MethodNotAllowed", f"{method} {path}: only POST is served here")
        if not _has_bearer_token(headers):
            return _error(401, "AuthenticationFailed", "a bearer token is required (Authorization: Bearer)")
        if match := _INGEST_PATH.match(path):
            return self._ingest(match["rule"], match["stream"], headers, body)
        if match := _QUERY_PATH.match(path):
            self._count(query_requests=1)
            return self._query(match["workspace"], body)
        if _BATCH_PATH.match(path):
            self._count(query_requests=1)
            return self._batch(body)
        return _error(404, "NotFound", f"no such route: POST {path}")

    def _ingest(self, rule: str, stream: str, headers: Mapping[str, str], body: bytes) -> Reply:
        self._count(ingestion_requests=1)
        reply = _with_error_code_header(self._ingest_checked(rule, stream, headers, body))
        if reply.status == 429:
            self._count(throttled_requests=1)
        elif 400 <= reply.status < 500:
            self._count(rejected_requests=1)
        return reply

    def _ingest_checked(self, rule: str, stream: str, headers: Mapping[str, str], body: bytes) -> Reply:
        if rule != self.dcr_immutable_id:
            message = f"data collection rule {rule} not found (this one is {self.dcr_immutable_id})"
            return _error(404, "NotFound", message)
        if down := self._outage():
            return down
        if throttled := self._take_throttle():
            return throttled
        if len(body) > MAX_REQUEST_BYTES:
            return _too_large(f"request body is {len(body)} bytes")
        table = self.store.table_for_stream(stream)
        if table is None:
            known = ", ".join(t.stream for t in self.store.tables)
            message = f"stream {stream} is not declared in the rule (declared: {known})"
            return _error(404, "InvalidStream", message)
        try:
            rows = _decode_rows(body, headers)
        except _PayloadTooLarge as exc:
            return _too_large(str(exc))
        except ValueError as exc:
            return _error(400, "InvalidContent", f"stream {stream}: {exc}")
        try:
            stored = self.store.insert(table, rows)
        except RowRejected as exc:
            return _error(400, "InvalidContent", str(exc))
        except StoreBusy as exc:
            return _busy(exc)
        self._count(rows_ingested=stored)
        return Reply(204)

    def _outage(self) -> Reply | None:
        with self._lock:
            until, status = self._outage_until, self._outage_status
        if until is None or self._clock.now() >= until:
            return None
        if status == 429:
            return _error(429, "TooManyRequests", "throttled: retry after 1 s", {"Retry-After": "1"})
        return _error(503, "ServiceUnavailable", f"the service is unavailable until {until:%H:%M} UTC",
                      {"Retry-After": "1"})

    def _take_throttle(self) -> Reply | None:
        with self._lock:
            if self._throttle_remaining <= 0:
                return None
            self._throttle_remaining -= 1
            seconds = self._throttle_retry_after
        if seconds == int(seconds):
            headers = {"Retry-After": str(int(seconds))}  # what the service sends: whole seconds
        else:
            # Retry-After holds whole seconds; azure-core also honours retry-after-ms, which
            # lets a test wait less than a second.
            headers = {"retry-after-ms": str(round(seconds * 1000))}
        return _error(429, "TooManyRequests", f"throttled: retry after {seconds:g} s", headers)

    def _query(self, workspace: str, body: bytes) -> Reply:
        try:
            request = json.loads(body or b"{}")
        except ValueError as exc:
            return _error(400, "BadArgumentError", f"request body is not JSON: {exc}")
        if not isinstance(request, dict):
            return _error(400, "BadArgumentError", "request body must be a JSON object with a query")
        return self._run_query(workspace, request)

    def _run_query(self, workspace: str, request: Mapping[str, Any]) -> Reply:
        if workspace != self.workspace_id:
            return _error(404, "WorkspaceNotFoundError", f"workspace {workspace} not found")
        kql = request.get("query")
        if not isinstance(kql, str) or not kql.strip():
            return _error(400, "BadArgumentError", "field 'query' is required and must be a non-empty string")
        try:
            span = parse_timespan(request.get("timespan"), self._clock.now())
        except BadTimespan as exc:
            return _error(400, "BadArgumentError", f"field 'timespan': {exc}")
        try:
            result = self.store.run(kql, span)
        except KqlQueryError as exc:
            return _bad_query(str(exc))
        except StoreBusy as exc:
            return _busy(exc)
        return Reply(200, _result_body(result, self.store.row_limit))

    def _batch(self, body: bytes) -> Reply:
        try:
            request = json.loads(body or b"{}")
            items = request["requests"]
            if not isinstance(items, list):
                raise TypeError("'requests' must be a list")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, "BadArgumentError", f"batch body must be {{'requests': [...]}}: {exc}")
        responses = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("body"), dict):
                message = "each batch request needs 'id', 'workspace' and 'body'"
                return _error(400, "BadArgumentError", message)
            reply = self._run_query(str(item.get("workspace")), item["body"])
            responses.append({"id": item.get("id"), "status": reply.status, "body": reply.body})
        return Reply(200, {"responses": responses})


# -- helpers ---------------------------------------------------------------------------------


class _PayloadTooLarge(ValueError):
    pass


def _has_bearer_token(headers: Mapping[str, str]) -> bool:
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    scheme, _, token = value.partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def _header(headers: Mapping[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")


def _decode_rows(body: bytes, headers: Mapping[str, str]) -> list[Any]:
    """The JSON array of records, inflated if gzipped; sized as the SDK sizes its chunks."""
    encoding = _header(headers, "Content-Encoding").strip().lower()
    if encoding == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            text = inflater.decompress(body, _MAX_INFLATED_BYTES)
        except zlib.error as exc:
            raise ValueError(f"body is not valid gzip: {exc}") from None
        if inflater.unconsumed_tail:
            raise _PayloadTooLarge(f"gzip body inflates past {_MAX_INFLATED_BYTES} bytes")
    elif encoding in ("", "identity"):
        text = body
    else:
        raise ValueError(f"Content-Encoding {encoding} is not supported (gzip or none)")
    try:
        rows = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(rows, list):
        raise ValueError("body must be a JSON array of records")
    size = sum(len(json.dumps(r).encode()) for r in rows)
    if size > MAX_REQUEST_BYTES:
        raise _PayloadTooLarge(f"records add up to {size} bytes uncompressed")
    return rows


def _with_error_code_header(reply: Reply) -> Reply:
    """The ingestion API names its error code in the ``x-ms-error-code`` header as well as the body
    (Upload's error response in the REST API specification;
    tests/fixtures/azure/logs_ingestion_errors.json)."""
    if reply.status < 400 or not isinstance(reply.body, Mapping):
        return reply
    return replace(reply, headers={**(reply.headers or {}), "x-ms-error-code": reply.body["error"]["code"]})


def _too_large(detail: str) -> Reply:
    # The service's own wording, from a recorded call (tests/fixtures/azure/logs_ingestion_errors.json).
    message = f"Maximum allowed content length: {MAX_REQUEST_BYTES} bytes (1 MB). {detail}"
    return _error(413, "ContentLengthLimitExceeded", message)


def _busy(exc: StoreBusy) -> Reply:
    return _error(503, "ServiceUnavailable", str(exc), {"Retry-After": str(_STORE_BUSY_RETRY_SECONDS)})


def _bad_query(message: str) -> Reply:
    # The engine's message at the top and as the innermost error: azure-core shows the first,
    # LogsQueryError (batch results) the second.
    return Reply(
        400,
        {
            "error": {
                "code": "BadArgumentError",
                "message": message,
                "innererror": {"code": "SemanticError", "message": message},
            }
        },
    )


def _result_body(result: QueryResult, row_limit: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "tables": [
            {
                "name": "PrimaryResult",
                "columns": [{"name": n, "type": t} for n, t in result.columns],
                "rows": [[_wire_value(v) for v in row] for row in result.rows],
            }
        ]
    }
    if result.truncated:
        # Shaped like the service's partial result: rows kept, error with code PartialError.
        message = (
            f"Query result set has exceeded the internal record count limit {row_limit} "
            "(E_QUERY_RESULT_SET_TOO_LARGE)"
        )
        body["error"] = {
            "code": "PartialError",
            "message": message,
            "details": [{"code": "EngineError", "message": message}],
        }
    return body


def _wire_value(value: Any) -> Any:
    """A DuckDB value as the query API writes it in JSON."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S")
        return text + (f".{moment.microsecond:06d}Z" if moment.microsecond else "Z")
    if isinstance(value, date):
        return value.isoformat() + "T00:00:00Z"
    if isinstance(value, timedelta):
        return _timespan_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID | bytes):
        return str(value)
    if isinstance(value, list | dict | tuple):
        # Kusto dynamic values travel as JSON text.
        return json.dumps(value, default=str)
    return value


def _timespan_text(value: timedelta) -> str:
    sign = "-" if value < timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    days = f"{value.days}." if value.days else ""
    fraction = f".{value.microseconds:06d}0" if value.microseconds else ""
    return f"{sign}{days}{hours:02d}:{minutes:02d}:{seconds:02d}{fraction}"


def parse_timespan(text: Any, now: datetime) -> TimeRange | None:
    """The query API's ISO 8601 interval: ``start/end``, ``start/duration``, ``duration/end`` or ``duration``.

    A bare duration ends now. ``None`` (or absent) means no limit, as azure-monitor-query
    sends when ``timespan=None``.
    """
    if text is None:
        return None
    if not isinstance(text, str) or not text.strip():
        raise BadTimespan(f"expected an ISO 8601 interval such as PT1H or start/end, got {text!r}")
    parts = text.strip().split("/")
    if len(parts) == 1:
        return TimeRange(now - _duration(parts[0]), now)
    if len(parts) != 2:
        raise BadTimespan(f"{text!r} has more than one '/'")
    first, second = parts
    try:
        if first.startswith("P"):
            end = _moment(second)
            return TimeRange(end - _duration(first), end)
        start = _moment(first)
        end = start + _duration(second) if second.startswith("P") else _moment(second)
        return TimeRange(start, end)
    except ValueError as exc:
        raise BadTimespan(f"{text!r}: {exc}") from None


def _duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if not match or text in ("P", "PT"):
        raise BadTimespan(f"{text!r} is not an ISO 8601 duration of weeks, days, hours, minutes, seconds")
    amounts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    return timedelta(**amounts)


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadTimespan(f"{text!r} is not an ISO 8601 date and time") from None
    # No offset means UTC, as in Log Analytics.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- HTTP ------------------------------------------------------------------------------------


def _handler_for(standin: LogAnalyticsStandIn) -> type[BaseHTTPRequestHandler]:
    return json_handler(standin.handle)
