"""An Event Grid custom topic with the CloudEvents v1.0 input schema, over HTTPS.

What it accepts is what ``azure-eventgrid``'s ``EventGridPublisherClient`` sends with a TokenCredential
to an Event Grid Basic topic (azure-eventgrid 4.22.1, ``_legacy/_publisher_client.py``):

* ``POST /api/events?api-version=2018-01-01`` (the topic endpoint is ``{base_url}/api/events``, as a
  topic's ``properties.endpoint`` is ``https://<topic>.<region>-1.eventgrid.azure.net/api/events``:
  "Publish events to Azure Event Grid custom topics");
* ``Authorization: Bearer <token>`` (any non-empty token: there is no identity here; the topic has
  local auth off, so ``aeg-sas-key`` / ``aeg-sas-token`` are refused with 401, as
  ``disableLocalAuth`` makes Event Grid do);
* ``Content-Type: application/cloudevents-batch+json; charset=utf-8`` and a JSON array of events
  (a single ``application/cloudevents+json`` event is accepted too, as Event Grid does).

Rules, each answered as Event Grid answers (``{"error": {"code", "message"}}``):

* every event has the CloudEvents 1.0 required attributes ``id``, ``source``, ``specversion``, ``type``,
  each a non-empty string, and ``specversion`` is ``1.0`` (CloudEvents 1.0 specification, "Required
  Attributes"; "CloudEvents v1.0 schema with Azure Event Grid"); ``time``, when present, is an RFC 3339
  time; ``data`` and ``data_base64`` are not both present (CloudEvents JSON format) -> 400;
* each event is at most 1 MB and the whole array at most 1 MB, else 413 Payload Too Large ("Azure Event
  Grid event schema": "the array can have a total size of up to 1 MB. Each event in the array is limited
  to 1 MB. If an event or the array is greater than the size limits, you receive the response 413").

Success is 200 with an empty body. Accepted events are kept in order (:attr:`EventGridTopicStandIn.events`)
for tests; :meth:`refuse_next` makes the next calls fail with a status, as an outage would.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from local.background_server import BackgroundServer, Reply, ServedStandIn, json_handler
from local.tls import LocalTls

# 1 MB per event and per batch ("Azure Event Grid event schema", size limits; "Azure Event Grid quotas and
# limits": event size and batch size 1 MB).
MAX_EVENT_BYTES = 1_048_576
MAX_BATCH_BYTES = 1_048_576
API_VERSION = "2018-01-01"  # the Event Grid Basic publishing API (azure-eventgrid's default for it)
REQUIRED_ATTRIBUTES = ("id", "source", "specversion", "type")  # CloudEvents 1.0, Required Attributes
_BATCH_TYPE = "application/cloudevents-batch+json"
_SINGLE_TYPE = "application/cloudevents+json"


@dataclass(frozen=True)
class TopicCounters:
    requests: int = 0
    events: int = 0
    rejected_requests: int = 0  # answered 4xx
    refused_requests: int = 0  # answered by refuse_next


class EventGridTopicStandIn(ServedStandIn):
    """The topic over HTTPS; ``endpoint`` is what EVENT_GRID_TOPIC_ENDPOINT is set to."""

    def __init__(self, tls: LocalTls, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._headers: list[dict[str, str]] = []
        self._counters = TopicCounters()
        self._refusals: list[int] = []
        self._server = BackgroundServer(json_handler(self._handle), name="eventgrid-standin", host=host,
                                        port=port, tls=tls)

    @property
    def endpoint(self) -> str:
        return self._server.url + "/api/events"

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events accepted so far, in the order received (CloudEvents JSON)."""
        with self._lock:
            return list(self._events)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """The headers of each accepted request (tests check what the SDK sent)."""
        with self._lock:
            return list(self._headers)

    @property
    def counters(self) -> TopicCounters:
        with self._lock:
            return self._counters

    def refuse_next(self, calls: int = 1, status: int = 503) -> None:
        """Answer the next ``calls`` publish requests with ``status`` (an outage, throttling)."""
        with self._lock:
            self._refusals += [status] * calls

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
            self._headers.clear()

    # -- the wire --------------------------------------------------------------------------------

    def _count(self, **changes: int) -> None:
        with self._lock:
            self._counters = replace(self._counters, **{
                name: getattr(self._counters, name) + value for name, value in changes.items()})

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        self._count(requests=1)
        reply, events = self._check(method, path, headers, body)
        if reply is not None:
            self._count(rejected_requests=1)
            return reply
        with self._lock:
            if self._refusals:
                status = self._refusals.pop(0)
                self._counters = replace(self._counters, refused_requests=self._counters.refused_requests + 1)
                return _error(status, "ServiceUnavailable" if status >= 500 else "TooManyRequests",
                              "refused by the stand-in (refuse_next)")
            self._events += events
            self._headers.append(headers)
            self._counters = replace(self._counters, events=self._counters.events + len(events))
        return Reply(200)

    def _check(self, method: str, path: str, headers: Mapping[str, str],
               body: bytes) -> tuple[Reply | None, list[dict[str, Any]]]:
        parts = urlsplit(path)
        if method != "POST" or parts.path.rstrip("/") != "/api/events":
            return _error(404, "NotFound", f"no route {method} {parts.path}"), []
        if parse_qs(parts.query).get("api-version") != [API_VERSION]:
            return _error(400, "BadRequest", f"api-version must be {API_VERSION}"), []
        lower = {k.lower(): v for k, v in headers.items()}
        if "aeg-sas-key" in lower or "aeg-sas-token" in lower:
            return _error(401, "Unauthorized", "local authentication is disabled on this topic; "
                                               "use a Microsoft Entra ID token"), []
        scheme, _, token = lower.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "Unauthorized", "a bearer token is required (Authorization: Bearer)"), []
        if len(body) > MAX_BATCH_BYTES:
            return _error(413, "PayloadTooLarge", f"the request is {len(body)} bytes; at most "
                                                  f"{MAX_BATCH_BYTES} per batch"), []
        content_type = lower.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in (_BATCH_TYPE, _SINGLE_TYPE):
            return _error(400, "BadRequest", f"content type {content_type!r}: a topic with the "
                                             f"CloudEvents schema takes {_BATCH_TYPE}"), []
        try:
            parsed = json.loads(body)
        except ValueError as error:
            return _error(400, "BadRequest", f"the body is not JSON: {error}"), []
        events = parsed if content_type == _BATCH_TYPE else [parsed]
        if not isinstance(events, list) or not events:
            return _error(400, "BadRequest", "the body must be a non-empty JSON array of CloudEvents"), []
        problems: list[str] = []
        for index, event in enumerate(events):
            size = len(json.dumps(event, separators=(",", ":")).encode())
            if size > MAX_EVENT_BYTES:
                return _error(413, "PayloadTooLarge", f"event {index} is {size} bytes; at most "
                                                      f"{MAX_EVENT_BYTES} per event"), []
            problems += [f"event {index}: {p}" for p in cloud_event_problems(event)]
        if problems:
            return _error(400, "BadRequest", "; ".join(problems)), []
        return None, events


def cloud_event_problems(event: Any) -> list[str]:
    """How ``event`` breaks the CloudEvents 1.0 JSON format's rules that Event Grid enforces."""
    if not isinstance(event, dict):
        return ["is not a JSON object"]
    problems = [f"required attribute {name!r} is missing or empty" for name in REQUIRED_ATTRIBUTES
                if not isinstance(event.get(name), str) or not event[name]]
    if isinstance(event.get("specversion"), str) and event["specversion"] and event["specversion"] != "1.0":
        problems.append(f"specversion {event['specversion']!r} is not supported; it must be 1.0")
    if "time" in event:
        try:
            datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))
        except ValueError:
            problems.append(f"time {event['time']!r} is not an RFC 3339 time")
    if "data" in event and "data_base64" in event:
        problems.append("data and data_base64 are both present")
    return problems


def _error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message}})
