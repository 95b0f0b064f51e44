"""The local workbook page: ``GET /`` renders the workbook for the parameters in the query string,
``GET /data`` returns the same document as JSON.

The server evaluates the workbook (parameter substitution, every visible query through the real
``LogsQueryClient``) and embeds the result in the page; the page's own script draws the views
(tables, tiles, SVG pie and bar charts) in the browser, with nothing loaded from the network.
The workbook file is read on each request, so an edit shows on reload.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from local.background_server import BackgroundServer, ServedStandIn
from local.clock import Clock
from local.workbook.evaluate import QueryRunner, evaluate
from local.workbook.model import WORKBOOK_FILE, WorkbookError, load_workbook

PAGE_TEMPLATE = Path(__file__).with_name("page.html")
_DATA_MARKER = "__WORKBOOK_DATA__"


class WorkbookServer(ServedStandIn):
    """Serves the workbook page on a loopback port; ``open_runner`` gives a query runner per request."""

    def __init__(
        self,
        open_runner: Callable[[], QueryRunner],
        clock: Clock,
        *,
        workbook_file: Path = WORKBOOK_FILE,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._open_runner = open_runner
        self._clock = clock
        self._workbook_file = workbook_file
        self._server = BackgroundServer(_handler_for(self), name="workbook-page", host=host, port=port)

    @property
    def url(self) -> str:
        return self._server.url + "/"

    def document(self, query_string: str) -> dict[str, Any]:
        """The evaluated workbook for ``query_string`` (``TimeRange=ms&OS=Linux&selectedTab=machines``)."""
        selections = parse_qs(query_string, keep_blank_values=False)
        runner = self._open_runner()
        try:
            return evaluate(load_workbook(self._workbook_file), selections, runner, self._clock.now())
        finally:
            close = getattr(runner, "close", None)
            if close is not None:
                close()


def render_page(document: dict[str, Any]) -> str:
    # "<" escaped so no value can end the script element early.
    data = json.dumps(document).replace("<", "\\u003c")
    return PAGE_TEMPLATE.read_text(encoding="utf-8").replace(_DATA_MARKER, data)


def _handler_for(server: WorkbookServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path not in ("/", "/data"):
                self._reply(404, "text/plain", f"no page {parts.path}; the workbook is at /")
                return
            try:
                document = server.document(parts.query)
            except WorkbookError as error:
                self._reply(400, "text/plain", f"workbook: {error}")
                return
            if parts.path == "/data":
                self._reply(200, "application/json", json.dumps(document, indent=1))
            else:
                self._reply(200, "text/html; charset=utf-8", render_page(document))

        def _reply(self, status: int, content_type: str, text: str) -> None:
            body = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
