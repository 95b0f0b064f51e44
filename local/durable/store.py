"""Where the local Durable runner keeps its task hub: two tables in Azure Storage (Azurite).

The layout follows the Durable Task Azure Storage provider (``{hub}Instances``, ``{hub}History``):

* ``{hub}Instances``: one entity per instance, PartitionKey = instance id, RowKey = "". Columns:
  ``Name``, ``RuntimeStatus``, ``Input``, ``Output``, ``CustomStatus`` (JSON text), ``CreatedTime``,
  ``LastUpdatedTime``, ``ExecutionId``, ``HistoryCount`` (how many history rows of that execution
  count), the parent link (``ParentInstanceId``, ``ParentExecutionId``, ``ParentTaskId``),
  ``Pending`` (the messages sent to the instance and not yet in its history: what the provider keeps in
  its control queues) and ``Bookkeeping`` (the runner's task numbering and retry counts, which a real
  host rebuilds from history).
* ``{hub}History``: one entity per history event, PartitionKey = instance id, RowKey = the event's
  index in its execution as 16 hex digits (as the provider's sequence numbers), ``ExecutionId``,
  ``EventType`` and ``Event`` (the event's JSON). Rows of an older execution (before a ContinueAsNew),
  or past ``HistoryCount`` (written by an episode that never committed), are ignored when read.

Text columns longer than one property can hold are split over ``Name``, ``Name_1``, ...: a string
property holds at most 64 KiB (32 K UTF-16 characters, Azure Storage's table service limits).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

_CHUNK_CHARS = 30_000  # under the 32 K UTF-16 characters of one string property
_BATCH_LIMIT = 100  # operations per entity group transaction (Azure's limit; Azurite does not enforce it)


@dataclass
class StoredInstance:
    """An instance row and the history rows of its current execution, as read back at start."""

    row: dict[str, Any]
    history: list[dict[str, Any]]

    def text(self, name: str) -> str | None:
        return get_text(self.row, name)


def put_text(entity: dict[str, Any], name: str, text: str | None) -> None:
    if text is None:
        return
    chunks = [text[i: i + _CHUNK_CHARS] for i in range(0, len(text), _CHUNK_CHARS)] or [""]
    entity[name] = chunks[0]
    for index, chunk in enumerate(chunks[1:], start=1):
        entity[f"{name}_{index}"] = chunk


def get_text(entity: dict[str, Any], name: str) -> str | None:
    if name not in entity:
        return None
    parts = [entity[name]]
    index = 1
    while f"{name}_{index}" in entity:
        parts.append(entity[f"{name}_{index}"])
        index += 1
    return "".join(parts)


class TableStore:
    """The task hub's Instances and History tables; every write is complete when the call returns."""

    def __init__(self, connection_string: str, task_hub: str) -> None:
        service = TableServiceClient.from_connection_string(connection_string)
        self.instances_table = f"{task_hub}Instances"
        self.history_table = f"{task_hub}History"
        self._instances: TableClient = service.create_table_if_not_exists(self.instances_table)
        self._history: TableClient = service.create_table_if_not_exists(self.history_table)

    def save_instance(self, instance_id: str, columns: dict[str, Any]) -> None:
        entity = {"PartitionKey": instance_id, "RowKey": ""}
        for name, value in columns.items():
            if isinstance(value, str) and len(value) > _CHUNK_CHARS:
                put_text(entity, name, value)
            elif value is not None:
                entity[name] = value
        self._instances.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def append_history(self, instance_id: str, execution_id: str, start: int,
                       events: list[dict[str, Any]]) -> None:
        operations = []
        for index, event in enumerate(events, start=start):
            entity = {
                "PartitionKey": instance_id, "RowKey": f"{index:016X}", "ExecutionId": execution_id,
                "EventType": int(event["EventType"]),
            }
            put_text(entity, "Event", json.dumps(event))
            operations.append(("upsert", entity, {"mode": UpdateMode.REPLACE}))
        for first in range(0, len(operations), _BATCH_LIMIT):
            self._history.submit_transaction(operations[first: first + _BATCH_LIMIT])

    def delete_instance(self, instance_id: str) -> None:
        rows = self._history.query_entities(
            "PartitionKey eq @pk", parameters={"pk": instance_id}, select=["PartitionKey", "RowKey"]
        )
        keys = [("delete", {"PartitionKey": r["PartitionKey"], "RowKey": r["RowKey"]}) for r in rows]
        for first in range(0, len(keys), _BATCH_LIMIT):
            self._history.submit_transaction(keys[first: first + _BATCH_LIMIT])
        with contextlib.suppress(ResourceNotFoundError):
            self._instances.delete_entity(instance_id, "")

    def load(self) -> Iterator[StoredInstance]:
        """Every instance, with the committed history of its current execution, in creation order."""
        rows = sorted(
            self._instances.list_entities(), key=lambda r: (r.get("CreatedTime", ""), r["PartitionKey"])
        )
        for entity in rows:
            row: dict[str, Any] = dict(entity)
            count = int(row.get("HistoryCount", 0))
            history: list[dict[str, Any]] = []
            if count:
                events = self._history.query_entities(
                    "PartitionKey eq @pk and ExecutionId eq @ex",
                    parameters={"pk": row["PartitionKey"], "ex": row.get("ExecutionId", "")},
                )
                by_index = {int(e["RowKey"], 16): e for e in events}
                missing = [i for i in range(count) if i not in by_index]
                if missing:
                    raise RuntimeError(
                        f"{self.history_table}: instance {row['PartitionKey']!r} has {count} committed "
                        f"events but rows {missing[:5]} are missing"
                    )
                history = [json.loads(get_text(dict(by_index[i]), "Event") or "{}") for i in range(count)]
            yield StoredInstance(row, history)
