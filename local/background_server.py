"""A local HTTP(S) server running in a daemon thread: what every stand-in serves through."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
