"""A local HTTP(S) server running in a daemon thread: what every stand-in serves through."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from local.tls import LocalTls

# A short poll interval lets stop() return at once instead of after serve_forever's default 0.5 s.
_POLL_SECONDS = 0.05
_JOIN_SECONDS = 5


class BackgroundServer:
    """``ThreadingHTTPServer`` on a loopback port (0: a free one), HTTPS when ``tls`` is given."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], *, name: str, host: str = "127.0.0.1",
                 port: int = 0, tls: LocalTls | None = None) -> None:
        self._handler = handler
        self._name = name
        self._address = (host, port)
        self._tls = tls
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        server = ThreadingHTTPServer(self._address, self._handler)
        server.daemon_threads = True
        if self._tls is not None:
            server.socket = self._tls.server_context().wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": _POLL_SECONDS}, name=self._name, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=_JOIN_SECONDS)

    @property
    def url(self) -> str:
        """``scheme://host:port`` of the running server."""
        if self._server is None:
            raise RuntimeError(f"{self._name} is not started")
        host, port = self._server.server_address[:2]
        return f"{'https' if self._tls else 'http'}://{host!s}:{port}"


class ServedStandIn:
    """A stand-in served by one :class:`BackgroundServer` (``_server``, set by the subclass): started and
    stopped, used as a context manager, and reached at :attr:`base_url`."""

    _server: BackgroundServer

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return self._server.url


@dataclass(frozen=True)
class Reply:
    """A stand-in's answer: a status, a JSON body (None: no body) and headers."""

    status: int
    body: Any = None
    headers: Mapping[str, str] | None = None


def json_handler(handle: Callable[[str, str, dict[str, str], bytes], Reply]) -> type[BaseHTTPRequestHandler]:
    """A request handler class that reads the body, asks ``handle(method, path, headers, body)`` and
    writes its :class:`Reply` as JSON: the HTTP side of the JSON stand-ins (Log Analytics, Resource Graph)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self._dispatch()

        def do_GET(self) -> None:
            self._dispatch()

        def _dispatch(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            reply = handle(self.command, self.path, dict(self.headers.items()), body)
            payload = b"" if reply.body is None else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for name, value in (reply.headers or {}).items():
                self.send_header(name, value)
            if payload:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload:
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
