"""The deployment scheduler's memory: up to when it has looked for due occurrences.

One entity in table ``SchedulerState``. The timer reads it, looks at ``(last checked, now]`` and
writes ``now`` back, so an occurrence is looked at by the firing after it and, if the timer was
down, by the first firing after the outage (which finds it due or missed, never lost).
"""

from __future__ import annotations

from datetime import datetime

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient, UpdateMode

from shared.azure.tables import ensure_table

STATE_TABLE = "SchedulerState"
_PARTITION, _ROW = "scheduler", "deployments"


class SchedulerState:
    def __init__(self, service: TableServiceClient) -> None:
        self._table = ensure_table(service, STATE_TABLE)

    def last_checked(self, default: datetime) -> datetime:
        """When the scheduler last looked; ``default`` the first time it runs."""
        try:
            entity = self._table.get_entity(_PARTITION, _ROW)
        except ResourceNotFoundError:
            return default
        value = entity["LastChecked"]
        assert isinstance(value, datetime)
        return value

    def checked(self, at: datetime) -> None:
        """Remember ``at``; never moves backwards (a late firing must not make others look again)."""
        if at <= self.last_checked(default=at.replace(year=1)):
            return
        self._table.upsert_entity(
            {"PartitionKey": _PARTITION, "RowKey": _ROW, "LastChecked": at}, mode=UpdateMode.REPLACE
        )
