"""Sending records to Log Analytics through the Logs Ingestion API.

Rows are checked against the table declarations in :mod:`shared.log_tables` before
anything is sent, so a renamed field fails here, loudly, rather than as a 400 from
the data collection rule. The SDK splits uploads at the 1 MB request limit and its
retry policy honours 429 ``Retry-After`` (azure-core), so neither is redone here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from azure.core.credentials import TokenCredential
from azure.monitor.ingestion import LogsIngestionClient

from shared.log_tables import HEARTBEAT, LogTable
from shared.model.machines import Machine


class RecordShapeError(ValueError):
    pass


def record_id(*parts: str) -> str:
    """Deterministic id for a row, so that a retried upload can be recognised."""
    return hashlib.sha256("|".join(parts).lower().encode()).hexdigest()[:32]


def check_rows(table: LogTable, rows: Sequence[Mapping[str, Any]]) -> None:
    declared = set(table.column_names())
    for index, row in enumerate(rows):
        unknown = sorted(set(row) - declared)
        if unknown:
            raise RecordShapeError(
                f"{table.name} row {index}: column(s) {', '.join(unknown)} are not declared "
                f"in shared/log_tables.py for {table.name}"
            )


class LogSink:
    def __init__(self, credential: TokenCredential, endpoint: str, dcr_immutable_id: str) -> None:
        self._client = LogsIngestionClient(endpoint=endpoint, credential=credential)
        self._rule_id = dcr_immutable_id

    def send(self, table: LogTable, rows: Sequence[Mapping[str, Any]]) -> int:
        if not rows:
            return 0
        check_rows(table, rows)
        self._client.upload(rule_id=self._rule_id, stream_name=table.stream, logs=[_wire(r) for r in rows])
        return len(rows)

    def close(self) -> None:
        self._client.close()


def _wire(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def heartbeat_row(machine: Machine, observed_at: datetime, run_id: str) -> dict[str, Any]:
    return {
        "TimeGenerated": observed_at,
        "RecordId": record_id(HEARTBEAT.name, run_id, machine.resource_id),
        "Computer": machine.computer_name,
        "SourceComputerId": machine.key,
        "ResourceId": machine.resource_id,
        "SubscriptionId": machine.subscription_id,
        "ResourceGroup": machine.resource_group,
        "ResourceLocation": machine.location,
        "ResourceProvider": (
            "Microsoft.Compute" if machine.environment.value == "Azure" else "Microsoft.HybridCompute"
        ),
        "ComputerEnvironment": machine.environment.value,
        "OSType": machine.os_type.value,
        "OSName": machine.os_name,
        "OSVersion": machine.os_version,
        "PowerState": machine.power_state.value,
        "PatchMode": machine.patch_mode,
        "Category": "Azure VM" if machine.environment.value == "Azure" else "Arc-enabled server",
        "Solutions": "updates",
        "Tags": dict(machine.tags),
    }
