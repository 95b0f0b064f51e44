"""The app's requests to Azure, counted in this process where azure-core sends them.

Every Azure SDK client of the app runs in the bench's process and sends through azure-core's
``RequestsTransport``, so wrapping its ``send`` sees each request on the wire (retries included) without
changing ``shared/``. A request is classified by the endpoint it went to, from the app settings the local
host set (the stand-ins' and Azurite's addresses), and, for Table and Blob Storage, by what it did
(Table service REST API: query, get, insert, update, merge, delete, entity group transaction).
"""

from __future__ import annotations

import gzip
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from azure.core.pipeline.transport import RequestsTransport

ARM = "ARM"
TABLE = "Table"
BLOB = "Blob"
QUEUE = "Queue"
LOGS_INGESTION = "Logs Ingestion"
RESOURCE_GRAPH = "Resource Graph"
LOG_QUERY = "Log Analytics query"
OTHER = "other"
KINDS = (ARM, TABLE, BLOB, LOGS_INGESTION, RESOURCE_GRAPH, LOG_QUERY, QUEUE, OTHER)
# The services the app uses: a report shows them even when a phase sent none (the app uses no queue).
SERVICES_USED = (ARM, TABLE, BLOB, LOGS_INGESTION, RESOURCE_GRAPH, LOG_QUERY)

# Which app setting (shared/settings.py) names each kind's endpoint; storage's are in its connection string.
ENDPOINT_SETTINGS = {
    "ARM_ENDPOINT": ARM,
    "RESOURCE_GRAPH_ENDPOINT": RESOURCE_GRAPH,
    "LOGS_INGESTION_ENDPOINT": LOGS_INGESTION,
    "LOGS_QUERY_ENDPOINT": LOG_QUERY,
}
CONNECTION_STRING_ENDPOINTS = {"TableEndpoint": TABLE, "BlobEndpoint": BLOB, "QueueEndpoint": QUEUE}
# Paths ending so list a subscription's or resource group's machines (Compute VMs, Arc servers).
LIST_SEGMENTS = ("virtualMachines", "machines")
# A sub-request of an entity group transaction: "PATCH http://host/account/table(PartitionKey=...) HTTP/1.1".
_CHANGESET_LINE = re.compile(rb"^(GET|POST|PUT|PATCH|MERGE|DELETE) (\S+) HTTP/1\.1\r?$", re.MULTILINE)


class Request(NamedTuple):
    """What one request was: its kind, what it touched (a table, a container, a stream) and how."""

    kind: str
    target: str
    operation: str


@dataclass(frozen=True)
class Endpoint:
    kind: str
    port: int | None
    path: str  # the base path, without a trailing "/"


def endpoints(settings: Mapping[str, str]) -> list[Endpoint]:
    """The endpoints the app sends to, from its settings (``LocalStack.app_settings()``), longest path first
    so that a base path inside another (``/v1`` of the Log Analytics stand-in) is matched first."""
    found = [_endpoint(kind, settings[name]) for name, kind in ENDPOINT_SETTINGS.items()
             if settings.get(name)]
    parts = dict(
        part.split("=", 1) for part in settings.get("STORAGE_CONNECTION_STRING", "").split(";") if "=" in part
    )
    found += [_endpoint(kind, parts[name]) for name, kind in CONNECTION_STRING_ENDPOINTS.items()
              if name in parts]
    return sorted(found, key=lambda e: -len(e.path))


def _endpoint(kind: str, url: str) -> Endpoint:
    split = urlsplit(url)
    return Endpoint(kind, split.port, split.path.rstrip("/"))


def classify(method: str, url: str, body: bytes, known: list[Endpoint]) -> Request:
    """What a request to ``url`` was, given the app's endpoints (:func:`endpoints`)."""
    split = urlsplit(url)
    for endpoint in known:
        if split.port == endpoint.port and (split.path + "/").startswith(endpoint.path + "/"):
            rest = split.path[len(endpoint.path):]
            query = parse_qs(split.query)
            if endpoint.kind == TABLE:
                return Request(TABLE, *table_operation(method, rest, body))
            if endpoint.kind == BLOB:
                return Request(BLOB, *blob_operation(method, rest, query))
            if endpoint.kind == ARM:
                return Request(ARM, "", arm_operation(method, rest))
            if endpoint.kind == LOGS_INGESTION:  # /dataCollectionRules/{dcr}/streams/{stream}
                return Request(LOGS_INGESTION, unquote(rest.rstrip("/").rsplit("/", 1)[-1]), method)
            return Request(endpoint.kind, "", method)
    return Request(OTHER, f"{split.hostname}:{split.port}", method)


def table_operation(method: str, path: str, body: bytes = b"") -> tuple[str, str]:
    """The table and the operation of a Table service request, from its path below the account
    (``/runs(PartitionKey='a',RowKey='b')``); an entity group transaction's table from its body."""
    resource = unquote(path.strip("/"))
    name, _, keys = resource.partition("(")
    if name == "$batch":
        first = _CHANGESET_LINE.search(body)
        table = table_operation("", urlsplit(first.group(2).decode()).path)[0] if first else "?"
        return table.rsplit("/", 1)[-1], "transaction"
    if name == "Tables":
        if method == "POST":
            try:
                return str(json.loads(body or b"{}").get("TableName", "?")), "create table"
            except ValueError:
                return "?", "create table"
        if method == "DELETE":
            return keys.rstrip(")").strip("'"), "delete table"
        return "(tables)", "list tables"
    name = name.rsplit("/", 1)[-1]
    by_key = "PartitionKey=" in keys
    operation = {
        "GET": "get" if by_key else "query",
        "POST": "insert",
        "PUT": "upsert/replace",
        "PATCH": "upsert/merge",
        "MERGE": "upsert/merge",
        "DELETE": "delete",
    }.get(method, method)
    return name, operation


def blob_operation(method: str, path: str, query: Mapping[str, list[str]]) -> tuple[str, str]:
    """The container and the operation of a Blob service request, from its path below the account."""
    container, _, blob = unquote(path.strip("/")).partition("/")
    comp, restype = query.get("comp", [""])[0], query.get("restype", [""])[0]
    if not blob:
        if comp == "list":
            return container or "(containers)", "list"
        if restype == "container":
            return container, {"PUT": "create container", "DELETE": "delete container"}.get(
                method, "container properties"
            )
        return container or "(account)", method
    operation = {"GET": "get", "HEAD": "properties", "PUT": "put", "DELETE": "delete"}.get(method, method)
    return container, f"{operation} {comp}" if comp else operation


def arm_operation(method: str, path: str) -> str:
    """An ARM request's method and what it asked for: the path's last segment, or what it names."""
    segments = [s for s in path.split("?")[0].split("/") if s]
    lowered = [s.lower() for s in segments]
    if "locations" in lowered and len(segments) > lowered.index("locations") + 2:
        # .../locations/{loc}/operations|operationStatus|operationResults/{id}
        kind = segments[lowered.index("locations") + 2]
        return f"{method} {kind} (operation status)"
    if len(segments) >= 2 and segments[-2] in LIST_SEGMENTS:
        return f"{method} one machine"
    last = segments[-1] if segments else "/"
    return f"{method} {last} (list)" if last in LIST_SEGMENTS else f"{method} {last}"


@dataclass
class Traffic:
    """Requests counted so far; :meth:`since` gives a phase's share."""

    requests: Counter[Request] = field(default_factory=Counter)
    failed: Counter[Request] = field(default_factory=Counter)  # 4xx, 5xx or no answer, status in operation
    transaction_entities: Counter[str] = field(default_factory=Counter)  # by table
    ingestion_bytes: Counter[str] = field(default_factory=Counter)  # "sent" (as sent), "rows" (uncompressed)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, request: Request, status: int | None, body: bytes, encoding: str) -> None:
        with self._lock:
            self.requests[request] += 1
            if status is None or status >= 400:
                self.failed[request._replace(operation=f"{request.operation} ({status or 'no answer'})")] += 1
            if request.operation == "transaction":
                self.transaction_entities[request.target] += len(_CHANGESET_LINE.findall(body))
            if request.kind == LOGS_INGESTION:
                self.ingestion_bytes["sent"] += len(body)
                self.ingestion_bytes["rows"] += len(gzip.decompress(body) if encoding == "gzip" else body)

    def snapshot(self) -> Traffic:
        with self._lock:
            return Traffic(Counter(self.requests), Counter(self.failed), Counter(self.transaction_entities),
                           Counter(self.ingestion_bytes))

    def since(self, earlier: Traffic) -> Traffic:
        now = self.snapshot()
        return Traffic(now.requests - earlier.requests, now.failed - earlier.failed,
                       now.transaction_entities - earlier.transaction_entities,
                       now.ingestion_bytes - earlier.ingestion_bytes)

    def by_kind(self) -> Counter[str]:
        kinds: Counter[str] = Counter()
        for request, count in self.requests.items():
            kinds[request.kind] += count
        return kinds


def request_body(request: Any) -> bytes:
    """The body azure-core is about to send (its legacy and its ``azure.core.rest`` requests keep it
    under different names); a body it streams from a file or generator is not read, and counts as empty."""
    for name in ("content", "body", "data"):
        value = getattr(request, name, None)
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode()
    return b""


@contextmanager
def counting_requests(settings: Mapping[str, str]) -> Iterator[Traffic]:
    """Count every request the Azure SDK clients of this process send while the block runs."""
    known = endpoints(settings)
    traffic = Traffic()
    original: Callable[..., Any] = RequestsTransport.send

    def send(transport: RequestsTransport, request: Any, **kwargs: Any) -> Any:
        body = request_body(request)
        status = None
        try:
            response = original(transport, request, **kwargs)
            status = response.status_code
            return response
        finally:
            kind = classify(request.method, request.url, body, known)
            traffic.record(kind, status, body, request.headers.get("Content-Encoding", ""))

    RequestsTransport.send = send
    try:
        yield traffic
    finally:
        RequestsTransport.send = original
