"""The Update Management workbook (``infra/workbooks/update-management.json``) rendered on a local page.

``serve_workbook(stack)`` starts the page for a running :class:`local.stack.LocalStack` and returns
its URL; :class:`WorkbookServer` is the same with a lifetime the caller controls (tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from local.workbook.evaluate import LogsQueryRunner, QueryFailed, ResultTable, evaluate, run_query_item
from local.workbook.model import WORKBOOK_FILE, Workbook, WorkbookError, load_workbook
from local.workbook.server import WorkbookServer

if TYPE_CHECKING:
    from local.stack import LocalStack

__all__ = [
    "WORKBOOK_FILE",
    "LogsQueryRunner",
    "QueryFailed",
    "ResultTable",
    "Workbook",
    "WorkbookError",
    "WorkbookServer",
    "evaluate",
    "load_workbook",
    "logs_runner_for",
    "run_query_item",
    "serve_workbook",
    "workbook_server_for",
]


def logs_runner_for(stack: LocalStack) -> LogsQueryRunner:
    """A query runner on the stack's Log Analytics, through the query endpoint the app uses."""
    from local.stack import WORKSPACE_ID
    from shared.azure.credentials import EmulatorCredential

    if stack.logs is None or stack.tls is None:
        raise RuntimeError("the local stack is not started: start it before serving the workbook")
    return LogsQueryRunner(
        stack.logs.base_url + "/v1",
        WORKSPACE_ID,
        EmulatorCredential(),
        connection_verify=str(stack.tls.ca_file),
    )


def workbook_server_for(stack: LocalStack, *, port: int = 0) -> WorkbookServer:
    """A (not yet started) workbook page for ``stack``; each request opens its own query client."""
    return WorkbookServer(lambda: logs_runner_for(stack), stack.clock, port=port)


def serve_workbook(stack: LocalStack, *, port: int = 0) -> str:
    """Start the workbook page for a running stack and return its URL.

    The page runs in a daemon thread for the rest of the process; once the stack stops, its
    queries fail and the page says so on each view.
    """
    return workbook_server_for(stack, port=port).start().url
