"""The Durable client HTTP API, served locally so ``df.DurableOrchestrationClient`` works unchanged.

The Functions host gives a durable client binding a JSON document whose ``rpcBaseUrl`` points at
the Durable extension's HTTP API; the SDK then starts, queries, signals and terminates
orchestrations over HTTP (azure/durable_functions/models/DurableOrchestrationClient.py). This
server answers the same paths, methods and status codes as the extension's ``HttpApiHandler``,
both under the RPC prefix and under the webhook prefix that ``create_check_status_response`` links to.
"""

from __future__ import annotations

import json
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from local.background_server import BackgroundServer
from local.durable.history import parse_time
from local.durable.runner import (
    COMPLETED,
    FAILED,
    LIVE_STATUSES,
    TERMINATED,
    DurableRunnerError,
    InstanceAlreadyRunning,
    InstanceGone,
    InstanceNotFound,
    UnknownFunction,
)

if TYPE_CHECKING:
    from local.durable.runner import DurableRunner

RPC_PREFIX = "/durabletask/"
WEBHOOK_PREFIX = "/runtime/webhooks/durabletask/"
CONNECTION_NAME = "Storage"  # the extension's default connection name, echoed in management URLs
INSTANCE_PLACEHOLDER = "INSTANCEID"  # the SDK replaces managementUrls["id"] with the instance id
STATUS_RETRY_AFTER_SECONDS = "5"  # the extension asks pollers of a running instance to wait 5 s


class _Reply:
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}


class ClientApiServer:
    """Plain HTTP on 127.0.0.1 (the host's RPC endpoint is loopback HTTP too)."""

    def __init__(self, runner: DurableRunner, host: str = "127.0.0.1", port: int = 0) -> None:
        self.runner = runner
        self._server = BackgroundServer(_handler_for(self), name="durable-client-api", host=host, port=port)

    @property
    def origin(self) -> str:
        return self._server.url

    @property
    def rpc_base_url(self) -> str:
        return self.origin + RPC_PREFIX

    def start(self) -> str:
        self._server.start()
        return self.rpc_base_url

    def stop(self) -> None:
        self._server.stop()

    # --- the binding document and the management links ---------------------------------------------

    def _query_suffix(self) -> str:
        return f"taskHub={quote(self.runner.task_hub)}&connection={CONNECTION_NAME}"

    def management_urls(self, instance_id: str = INSTANCE_PLACEHOLDER) -> dict[str, str]:
        base = self.origin + WEBHOOK_PREFIX + "instances/" + quote(instance_id, safe="")
        suffix = self._query_suffix()
        return {
            "id": instance_id,
            "statusQueryGetUri": f"{base}?{suffix}",
            "sendEventPostUri": f"{base}/raiseEvent/{{eventName}}?{suffix}",
            "terminatePostUri": f"{base}/terminate?reason={{text}}&{suffix}",
            "rewindPostUri": f"{base}/rewind?reason={{text}}&{suffix}",
            "purgeHistoryDeleteUri": f"{base}?{suffix}",
            "restartPostUri": f"{base}/restart?{suffix}",
            "suspendPostUri": f"{base}/suspend?reason={{text}}&{suffix}",
            "resumePostUri": f"{base}/resume?reason={{text}}&{suffix}",
        }

    def binding_json(self) -> str:
        """What the host passes to a ``durable_client_input`` binding (``DurableOrchestrationBindings``)."""
        prefix = self.origin + WEBHOOK_PREFIX + "orchestrators/{functionName}[/{instanceId}]"
        suffix = self._query_suffix()
        return json.dumps({
            "taskHubName": self.runner.task_hub,
            "creationUrls": {
                "createNewInstancePostUri": f"{prefix}?{suffix}",
                "createAndWaitOnNewInstancePostUri":
                    f"{prefix}?timeout={{timeoutInSeconds}}&pollingInterval={{intervalInSeconds}}&{suffix}",
            },
            "managementUrls": self.management_urls(),
            "baseUrl": self.origin + WEBHOOK_PREFIX.rstrip("/"),
            "requiredQueryStringParameters": suffix,
            "rpcBaseUrl": self.rpc_base_url,
            "httpBaseUrl": self.origin + WEBHOOK_PREFIX,
            "maxGrpcMessageSizeInBytes": 0,
        })

    # --- routing ----------------------------------------------------------------------------------

    def handle(self, method: str, target: str, body: bytes, content_type: str) -> _Reply:
        split = urlsplit(target)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        for prefix in (RPC_PREFIX, WEBHOOK_PREFIX):
            if path.startswith(prefix):
                parts = [p for p in path[len(prefix):].split("/") if p]
                break
        else:
            return _Reply(404, {"Message": f"no Durable API at {path}"})
        try:
            return self._route(method, parts, query, body, content_type)
        except (UnknownFunction, ValueError) as error:
            return _Reply(400, {"Message": "One or more of the arguments submitted is incorrect",
                                "ExceptionMessage": str(error)})
        except DurableRunnerError as error:
            return _Reply(500, {"Message": "Something went wrong while processing your request",
                                "ExceptionMessage": str(error)})

    def _route(self, method: str, parts: list[str], query: dict[str, str], body: bytes,
               content_type: str) -> _Reply:
        if parts[:1] == ["orchestrators"] and len(parts) in (2, 3) and method == "POST":
            return self._start(parts[1], parts[2] if len(parts) == 3 else None, body)
        if parts[:1] != ["instances"]:
            return _Reply(404)
        if len(parts) == 1:
            if method == "GET":
                return self._list(query)
            if method == "DELETE":
                return self._purge_by(query)
        elif len(parts) == 2:
            if method == "GET":
                return self._get(parts[1], query)
            if method == "DELETE":
                return self._purge(parts[1])
        elif method == "POST" and len(parts) == 3 and parts[2].lower() == "terminate":
            return self._terminate(parts[1], query.get("reason", ""))
        elif method == "POST" and len(parts) == 4 and parts[2] == "raiseEvent":
            return self._raise_event(parts[1], parts[3], body, content_type)
        elif method == "POST" and len(parts) == 3:
            return _Reply(501, {"Message": f"{parts[2]} is not supported by the local Durable runner"})
        return _Reply(404)

    def _start(self, name: str, instance_id: str | None, body: bytes) -> _Reply:
        # The SDK JSON-encodes the input, then aiohttp encodes that text again: one decode leaves the
        # JSON text the orchestrator's get_input() decodes, exactly as the extension hands it over.
        input_text: str | None = None
        if body:
            value = json.loads(body)
            input_text = value if isinstance(value, str) else json.dumps(value)
        try:
            instance_id = self.runner.start_new_raw(name, instance_id, input_text)
        except InstanceAlreadyRunning as error:
            return _Reply(409, {"Message": str(error)})
        links = self.management_urls(instance_id)
        return _Reply(202, links, {"Location": links["statusQueryGetUri"]})

    def _get(self, instance_id: str, query: dict[str, str]) -> _Reply:
        show_history = query.get("showHistory", "").lower() == "true"
        status = self.runner.get_status(instance_id, show_history=show_history)
        if status is None:
            return _Reply(404)
        if query.get("showInput", "true").lower() == "false":
            status.pop("input", None)
        if status["runtimeStatus"] in LIVE_STATUSES:
            location = self.management_urls(instance_id)["statusQueryGetUri"]
            return _Reply(202, status, {"Location": location, "Retry-After": STATUS_RETRY_AFTER_SECONDS})
        if status["runtimeStatus"] == FAILED and query.get("returnInternalServerErrorOnFailure") == "true":
            return _Reply(500, status)
        return _Reply(200, status)

    def _list(self, query: dict[str, str]) -> _Reply:
        wanted = [s for s in query.get("runtimeStatus", "").split(",") if s]
        prefix = query.get("instanceIdPrefix", "")
        start, end = _time_bounds(query)
        rows = [
            s for s in self.runner.list_instances(wanted or None)
            if s["instanceId"].startswith(prefix) and _within(s["createdTime"], start, end)
        ]
        if query.get("showInput", "true").lower() == "false":
            for row in rows:
                row.pop("input", None)
        return _Reply(200, rows)

    def _purge(self, instance_id: str) -> _Reply:
        status = self.runner.get_status(instance_id)
        if status is None:
            return _Reply(404)
        if status["runtimeStatus"] not in (COMPLETED, FAILED, TERMINATED):
            return _Reply(412, {"Message": f"only ended orchestrations can be purged; {instance_id} is "
                                           f"{status['runtimeStatus']}"})
        return _Reply(200, {"instancesDeleted": int(self.runner.purge(instance_id))})

    def _purge_by(self, query: dict[str, str]) -> _Reply:
        if "createdTimeFrom" not in query:
            return _Reply(400, {"Message": "Please provide value for 'createdTimeFrom' parameter."})
        start, end = _time_bounds(query)
        ended = [COMPLETED, FAILED, TERMINATED]
        wanted = [s for s in query.get("runtimeStatus", "").split(",") if s] or ended
        deleted = 0
        for status in self.runner.list_instances(wanted):
            if status["runtimeStatus"] not in LIVE_STATUSES and _within(status["createdTime"], start, end):
                deleted += int(self.runner.purge(status["instanceId"]))
        return _Reply(200, {"instancesDeleted": deleted}) if deleted else _Reply(404)

    def _terminate(self, instance_id: str, reason: str) -> _Reply:
        try:
            self.runner.terminate(instance_id, reason)
        except InstanceNotFound:
            return _Reply(404)
        except InstanceGone:
            return _Reply(410)
        return _Reply(202)

    def _raise_event(self, instance_id: str, name: str, body: bytes, content_type: str) -> _Reply:
        if content_type.split(";")[0].strip().lower() != "application/json":
            return _Reply(400, {"Message": "Only application/json request content is supported"})
        # Parsed once, as the extension does: data the Python SDK sent (encoded twice) reaches the
        # orchestrator as a JSON string, which is what it gets in Azure.
        data = json.loads(body) if body else None
        try:
            self.runner.raise_event(instance_id, name, data)
        except InstanceNotFound:
            return _Reply(404)
        except InstanceGone:
            return _Reply(410)
        return _Reply(202)


def _time_bounds(query: dict[str, str]) -> tuple[datetime | None, datetime | None]:
    def read(key: str) -> datetime | None:
        text = query.get(key)
        if not text:
            return None
        try:
            return parse_time(text)
        except ValueError as error:
            raise ValueError(f"{key}: not an ISO 8601 date-time ({text!r})") from error

    return read("createdTimeFrom"), read("createdTimeTo")


def _within(created: str, start: datetime | None, end: datetime | None) -> bool:
    moment = parse_time(created)
    return (start is None or moment >= start) and (end is None or moment <= end)


def _handler_for(server: ClientApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _dispatch(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                reply = server.handle(self.command, self.path, body, self.headers.get("Content-Type", ""))
            except json.JSONDecodeError as error:
                reply = _Reply(400, {"Message": "Invalid JSON content", "ExceptionMessage": str(error)})
            data = b"" if reply.body is None else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            if data:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _dispatch

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
