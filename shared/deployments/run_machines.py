"""A run's machines as a :class:`~shared.fleet.machine_names.MachineDirectory`, so the run routes take a
machine by any of its names, as the inventory routes do: a key is a point read in the run's partition, a
name one query of that partition (a machine gone from the inventory since still has its row here)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from shared.deployments.runs_table import MACHINE_ROW_PREFIX, RunNotFound, RunStore
from shared.fleet.machine_names import MachineEntry


class RunMachines:
    def __init__(self, store: RunStore, run_id: str) -> None:
        self._store = store
        self._run_id = run_id
        self.where = f"run {run_id}"

    def by_key(self, key: str) -> MachineEntry | None:
        try:
            return _entry(self._store.machine(self._run_id, key))
        except RunNotFound:
            return None

    def entries(self) -> Iterator[MachineEntry]:
        for row in self._store.machines(self._run_id):
            yield _entry(row)

    def complete(self, entry: MachineEntry) -> MachineEntry:
        return entry  # the run's rows are read whole


def _entry(row: Mapping[str, Any]) -> MachineEntry:
    key = str(row["RowKey"]).removeprefix(MACHINE_ROW_PREFIX)
    return MachineEntry(key, str(row.get("ResourceId") or ""), row.get("Computer") or None, row)
