"""The Functions runner: invokes the app's timer and HTTP functions as the Functions host would.

It loads ``function_app.app``, reads each function's trigger and bindings from the app
itself (the same metadata the host indexes), and calls the user function with bindings
passed by keyword: the trigger (``HttpRequest`` or ``TimerRequest``) and, where declared,
the Durable client binding document of the local Durable runner. ``serve`` exposes the
HTTP routes on a local port under ``/api`` (host.json's route prefix) so people can curl them.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
from azure.functions.timer import TimerRequest

from local.app_index import app_functions
from local.background_server import BackgroundServer
from shared.principal import PRINCIPAL_HEADER

ROUTE_PREFIX = "/api"  # host.json extensions.http.routePrefix
# Methods the Functions host never hands to a function that does not declare them.
_ROUTING_ONLY_METHODS = frozenset({"HEAD", "OPTIONS"})

_log = logging.getLogger(__name__)


class FunctionNotFound(LookupError):
    pass


@dataclass
class HostedFunction:
    name: str
    trigger: str
    trigger_binding: str
    user_function: Callable[..., Any]
    client_binding: str | None = None
    route: str | None = None
    methods: tuple[str, ...] = ()
    schedule: str | None = None
    route_pattern: re.Pattern[str] | None = field(default=None, repr=False)


def _route_regex(template: str) -> re.Pattern[str]:
    """Turn a Functions route template (``runs/{runId}``, ``{id:int}``, ``{name?}``) into a regex."""
    pattern = ""
    for part in re.split(r"(\{[^}]+\})", template.strip("/")):
        if part.startswith("{"):
            name, _, constraint = part[1:-1].partition(":")
            optional = name.endswith("?") or constraint.endswith("?")
            name = name.rstrip("?")
            body = r"\d+" if constraint.rstrip("?") == "int" else r"[^/]+"
            pattern += f"(?P<{name}>{body})" + ("?" if optional else "")
        else:
            pattern += re.escape(part)
    return re.compile(f"^{pattern}/?$")


def index_functions(app: Any) -> dict[str, HostedFunction]:
    hosted: dict[str, HostedFunction] = {}
    for function in app_functions(app):
        bindings = function.get_bindings()
        trigger = next((b for b in bindings if str(b.type).endswith("Trigger")), None)
        if trigger is None:
            continue
        client = next((b.name for b in bindings if b.type == "durableClient"), None)
        entry = HostedFunction(
            name=function.get_function_name(),
            trigger=str(trigger.type),
            trigger_binding=trigger.name,
            user_function=function.get_user_function(),
            client_binding=client,
        )
        if entry.trigger == "httpTrigger":
            entry.route = getattr(trigger, "route", None) or entry.name
            entry.methods = tuple(str(getattr(m, "value", m)).upper() for m in (trigger.methods or []))
            entry.route_pattern = _route_regex(entry.route)
        elif entry.trigger == "timerTrigger":
            entry.schedule = getattr(trigger, "schedule", None)
        hosted[entry.name] = entry
    return hosted


class _WorkerLoop:
    """One long-lived event loop in its own thread, as the Python worker has.

    The Durable client keeps one aiohttp session per process, bound to the loop that
    created it; a fresh ``asyncio.run`` per call would leave it on a closed loop.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, awaitable: Any) -> Any:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="worker", daemon=True)
                self._thread.start()
                atexit.register(self.close)
        return asyncio.run_coroutine_threadsafe(_await(awaitable), self._loop).result()

    def close(self) -> None:
        """Stop the loop at exit, so no thread still holds objects while the interpreter finalises."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        try:  # the Durable SDK's process-wide aiohttp session lives on this loop
            from azure.durable_functions.models.utils import http_utils

            asyncio.run_coroutine_threadsafe(http_utils._close_session(), loop).result(timeout=5)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


async def _await(awaitable: Any) -> Any:
    return await awaitable


_WORKER_LOOP = _WorkerLoop()


def run_in_worker_loop(awaitable: Any) -> Any:
    """Run a coroutine on the worker loop (for code outside a function that uses the Durable client)."""
    return _WORKER_LOOP.run(awaitable)


def _call(function: Callable[..., Any], **kwargs: Any) -> Any:
    result = function(**kwargs)
    if inspect.isawaitable(result):
        return _WORKER_LOOP.run(result)
    return result


class FunctionsHost:
    """Invokes timer and HTTP functions of a Functions app in this process."""

    def __init__(self, app: Any, client_binding_json: Callable[[], str] | None = None,
                 *, signed_in_principal: str | None = None) -> None:
        self.functions = index_functions(app)
        self._client_binding_json = client_binding_json
        # App Service Authentication stands in front of the app in Azure and adds the
        # principal header; the local server adds the local operator's principal the same way.
        self._signed_in_principal = signed_in_principal
        self._server: BackgroundServer | None = None

    def _bindings(self, entry: HostedFunction, trigger_value: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {entry.trigger_binding: trigger_value}
        if entry.client_binding:
            if self._client_binding_json is None:
                raise RuntimeError(f"{entry.name} needs a Durable client, but no Durable runner is attached")
            kwargs[entry.client_binding] = self._client_binding_json()
        return kwargs

    def fire_timer(self, name: str, *, past_due: bool = False) -> Any:
        entry = self.functions.get(name)
        if entry is None or entry.trigger != "timerTrigger":
            raise FunctionNotFound(f"no timer function named {name!r}; timers: {', '.join(self.timers())}")
        return _call(entry.user_function, **self._bindings(entry, TimerRequest(past_due=past_due)))

    def timers(self) -> list[str]:
        return sorted(n for n, f in self.functions.items() if f.trigger == "timerTrigger")

    def request(self, method: str, path: str, *, body: bytes | str | dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> func.HttpResponse:
        """Route ``method path`` (``/api/...``, with an optional query string) to its HTTP function."""
        split = urlsplit(path)
        route = split.path
        if route.startswith(ROUTE_PREFIX + "/"):
            route = route[len(ROUTE_PREFIX) + 1:]
        headers = dict(headers or {})
        if self._signed_in_principal and PRINCIPAL_HEADER.lower() not in {h.lower() for h in headers}:
            headers[PRINCIPAL_HEADER] = self._signed_in_principal
        payload = json.dumps(body).encode() if isinstance(body, dict) else (
            body.encode() if isinstance(body, str) else (body or b"")
        )
        method = method.upper()
        allowed: list[str] = []
        for entry in self.functions.values():
            if entry.trigger != "httpTrigger" or entry.route_pattern is None:
                continue
            match = entry.route_pattern.match(route)
            if not match:
                continue
            if entry.methods and method not in entry.methods:
                allowed += entry.methods
                continue
            request = func.HttpRequest(
                method=method,
                url=f"http://localhost{ROUTE_PREFIX}/{route}" + (f"?{split.query}" if split.query else ""),
                headers=headers,
                params=dict(parse_qsl(split.query)),
                route_params={k: v for k, v in match.groupdict().items() if v is not None},
                body=payload,
            )
            response: func.HttpResponse = _call(entry.user_function, **self._bindings(entry, request))
            return response
        if allowed and method in _ROUTING_ONLY_METHODS:
            # The host's router answers a bare 404 for a method no function declares on the route
            # (Azure/azure-functions-host#11625 for HEAD, #10098 for the rest); it has no CORS preflight
            # unless CORS is configured, and this app configures none.
            return func.HttpResponse(status_code=404)
        if allowed:
            return func.HttpResponse(
                json.dumps({"error": {"code": "MethodNotAllowed", "message": f"use {', '.join(allowed)}"}}),
                status_code=405, mimetype="application/json",
            )
        return func.HttpResponse(
            json.dumps({"error": {"code": "NotFound", "message": f"no function serves {route!r}"}}),
            status_code=404, mimetype="application/json",
        )

    # --- serving the routes over HTTP -------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the HTTP functions in a background thread; returns the base URL."""
        hosting = self

        class Handler(BaseHTTPRequestHandler):
            def _dispatch(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    response = hosting.request(self.command, self.path, body=body, headers=dict(self.headers))
                except Exception as error:  # noqa: BLE001 - an unhandled function error is a 500, as in Azure
                    _log.exception("%s %s failed", self.command, self.path)  # as the Functions host logs it
                    response = func.HttpResponse(
                        json.dumps({"error": {"code": "FunctionError", "message": str(error)}}),
                        status_code=500, mimetype="application/json",
                    )
                data = response.get_body()
                headers = dict(response.headers.items())
                self.send_response(response.status_code)
                for key, value in headers.items():
                    if key.lower() != "content-length":
                        self.send_header(key, value)
                if response.mimetype and "content-type" not in {k.lower() for k in headers}:
                    self.send_header("Content-Type", response.mimetype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":  # a HEAD answer has headers only (RFC 9110 9.3.2)
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = BackgroundServer(Handler, name="functions-host", host=host, port=port)
        self._server.start()
        return self._server.url

    def stop(self) -> None:
        if self._server:
            self._server.stop()
            self._server = None
