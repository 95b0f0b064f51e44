"""Sending records to Log Analytics through the Logs Ingestion API.

Rows are checked against the table declarations in :mod:`shared.log_tables` before
anything is sent, so a renamed field fails here, loudly, rather than as a 400 from
the data collection rule. The SDK splits uploads at the 1 MB request limit and its
retry policy honours 429 ``Retry-After`` (azure-core), so neither is redone here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from azure.core.credentials import TokenCredential
from azure.monitor.ingestion import LogsIngestionClient

from shared.azure.clients import shared_client
from shared.log_tables import LogTable, check_rows


class LogSink:
    def __init__(self, credential: TokenCredential, endpoint: str, dcr_immutable_id: str) -> None:
        # The process's client for this endpoint and credential (shared.azure.clients); never closed here.
        self._client = shared_client(
            ("ingestion", endpoint, credential),
            lambda: LogsIngestionClient(endpoint=endpoint, credential=credential),
        )
        self._rule_id = dcr_immutable_id

    def send(self, table: LogTable, rows: Sequence[Mapping[str, Any]]) -> int:
        if not rows:
            return 0
        check_rows(table, rows)
        return self.send_wire(table, [wire_row(r) for r in rows])

    def send_wire(self, table: LogTable, rows: Sequence[Mapping[str, Any]], **options: Any) -> int:
        """Upload rows already in wire form (:func:`wire_row`); ``options`` go to azure-core
        (``retry_total``, ...). Raises what the SDK raises (HttpResponseError when refused)."""
        if rows:
            self._client.upload(rule_id=self._rule_id, stream_name=table.stream, logs=[dict(r) for r in rows],
                                **options)
        return len(rows)


def wire_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as JSON values: date-times as ISO 8601 text."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
