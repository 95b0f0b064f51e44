"""Log Analytics queries through azure-monitor-query: a workspace query's column of values."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError
from azure.monitor.query import LogsQueryClient

from shared.azure.clients import shared_client


class LogQueryError(Exception):
    """The query failed, returned no table, or lacks the column asked for."""


def column_values(client: LogsQueryClient, workspace_id: str, query: str, column: str,
                  timespan: timedelta) -> list[str]:
    """The non-empty values of ``column`` in the first table ``query`` returns."""
    try:
        result = client.query_workspace(workspace_id, query, timespan=timespan)
    except HttpResponseError as error:
        raise LogQueryError(f"the query failed: {error.message}") from error
    tables = getattr(result, "tables", None)
    if not tables:
        raise LogQueryError(f"the query returned no table (status {result.status})")
    table = tables[0]
    if column not in table.columns:
        returned = ", ".join(table.columns)
        raise LogQueryError(f"the query must return a {column} column; it returned {returned}")
    index = list(table.columns).index(column)
    return [str(row[index]) for row in table.rows if row[index]]


def column_reader(credential: TokenCredential, endpoint: str, workspace_id: str, column: str,
                  timespan: timedelta) -> Callable[[str], list[str]]:
    """A runner of :func:`column_values` on the process's client for ``endpoint`` and ``credential``
    (shared.azure.clients), taken only when a query is run."""

    def run(query: str) -> list[str]:
        client = shared_client(
            ("query", endpoint, credential), lambda: LogsQueryClient(credential, endpoint=endpoint)
        )
        return column_values(client, workspace_id, query, column, timespan)

    return run
