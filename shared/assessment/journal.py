"""The batch's journal: what each machine's scan changed, applied to the fleet-wide tables once per batch.

A machine's scan is recorded in its own partition of ``MachineUpdates`` (one read, one transaction:
:meth:`UpdateInventory.record_assessment`). What the rest of the inventory needs from it (the Machines
entity's new state, the reverse-index entries and catalogue deltas of the gaps it opened or closed,
its Log Analytics rows) goes into one journal entity, and the batch applies the whole journal at its
end (:func:`apply_journal`): Machines merges in transactions per subscription, reverse-index entries
in transactions per update, each touched catalogue entry changed once by the batch's delta, and the
rows queued in the outbox in transactions of 100. So the fleet-wide tables cost requests per batch,
not per update per machine.

Layout: table ``InventoryJournal``, PartitionKey the batch (``{run}|{batch:05d}``), RowKey
``{machine key}|{milliseconds}`` (a deployment scans a machine twice: both apply, in order), the entry as
JSON over ``Entry0``, ``Entry1``, ... (:func:`split_property`). ``~applied`` marks a journal applied.
An assessment run applies the journals of several finished batches together (fewer transactions: one
per update and subscription for all of them); a deployment batch applies its own when it ends.

Idempotent: an entry is an upsert of the same JSON; applying again is skipped once ``~applied`` is
written, and before that every step is an upsert or a create, except the catalogue's counts, which
remember the applications they took (``AppliedBatches``: the journal, or a digest of the set).

A deployment batch keeps most of its entries elsewhere: a step that writes its machine's row anyway
carries the entry there (:func:`carried_columns`, the pre-scan's) and the batch's end reads the batch's
rows and applies those entries with the journal's (``apply(..., carried=...)``); the same rules hold
(a redelivered step merges the same columns; the ``~applied`` row covers both).

An Arc server assessed by a run leaves only a flagged entry (``awaiting_list``): its scan is recorded
when the journal is applied, with the list one Resource Graph read finds for every flagged machine of the
application (``apply(..., complete=...)``, shared.assessment.arc_patches), and applied with the rest.

Left for the operator: a batch that never reaches its end (its orchestration terminated) leaves its
journal unapplied; the machines' own partitions are right, the catalogue's counts lag until
``apply_journal`` runs for it.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient

from shared.assessment.updates_table import (
    NewVersions,
    UpdateInventory,
    catalogue_fields,
    index_entity,
)
from shared.azure.log_ingestion import wire_row
from shared.azure.log_outbox import LogOutbox
from shared.azure.tables import ensure_table, join_property, split_property
from shared.log_tables import TABLES, LogTable
from shared.model.machines import Machine

JOURNAL_TABLE = "InventoryJournal"
APPLIED_ROW = "~applied"
# An entity holds at most 1 MiB (Table service data model), UTF-16 counted: an entry whose JSON is
# longer (thousands of Update_CL rows) queues its rows in the outbox directly and journals the rest.
MAX_ENTRY_CHARS = 400_000
# An entry or list of rows carried in another entity (a deployment's machine row, beside its machine, its
# figures and up to two other such texts) stays under this many characters, so three of them take at most
# 720 KB of the entity's 1 MiB (UTF-16); a longer one goes to the journal table (or the outbox) instead.
MAX_CARRIED_CHARS = 120_000
_TABLES = {t.name: t for t in TABLES}


# What InventoryJournal.apply calls with the entries awaiting a list: records their machines (with the list,
# or from the counts) and answers their entries (shared.assessment.recording.recorded_with_lists).
Completion = Callable[[Sequence["JournalEntry"]], Sequence["JournalEntry"]]


def journal_key(run_id: str, batch: int) -> str:
    """The journal of one batch of one run."""
    return f"{run_id}|{batch:05d}"


@dataclass
class JournalEntry:
    """One scan's effect outside the machine's own partition."""

    machine_key: str
    os_type: str
    at: datetime
    machine_state: dict[str, Any]  # the Machines entity's MERGE
    index: list[dict[str, Any]] = field(default_factory=list)  # reverse-index entities of changed gaps
    deltas: dict[str, int] = field(default_factory=dict)  # update key -> +1 opened / -1 closed
    catalogue: dict[str, dict[str, Any]] = field(default_factory=dict)  # update key -> catalogue fields
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # Log Analytics table -> rows
    # An Arc server whose scan is recorded when the journal is applied, with the list Resource Graph has
    # then (shared.assessment.arc_patches.ListWanted: what recording it needs); None for every other scan.
    awaiting_list: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps({
            "machine": self.machine_key, "os": self.os_type, "at": self.at.isoformat(),
            "state": _typed(self.machine_state), "index": self.index, "deltas": self.deltas,
            "catalogue": {k: _typed(v) for k, v in self.catalogue.items()},
            "rows": {t: [wire_row(r) for r in rows] for t, rows in self.rows.items()},
            **({"awaiting": self.awaiting_list} if self.awaiting_list is not None else {}),
        }, separators=(",", ":"))  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> JournalEntry:
        data = json.loads(text)
        return cls(
            machine_key=data["machine"], os_type=data["os"], at=datetime.fromisoformat(data["at"]),
            machine_state=_untyped(data["state"]), index=data["index"], deltas=data["deltas"],
            catalogue={k: _untyped(v) for k, v in data["catalogue"].items()}, rows=data["rows"],
            awaiting_list=data.get("awaiting"),
        )  # fmt: skip


def entry_for(machine: Machine, at: datetime, machine_state: dict[str, Any],
              opened: Sequence[Mapping[str, Any]], closed: Sequence[Mapping[str, Any]],
              revised: Sequence[Mapping[str, Any]], rows: dict[str, list[dict[str, Any]]]) -> JournalEntry:
    """The journal entry of one recorded scan: reverse-index entries and deltas of the gaps it opened or
    closed, catalogue fields of the updates it opened or revised, and its Log Analytics rows."""
    os_type = machine.os_type.value
    index = [index_entity(os_type, g, machine.key, machine.resource_id, machine.computer_name)
             for g in (*opened, *closed)]
    deltas = {str(g["RowKey"]): 1 for g in opened} | {str(g["RowKey"]): -1 for g in closed}
    catalogue = {str(g["RowKey"]): catalogue_fields(g) for g in (*opened, *revised)}
    return JournalEntry(machine.key, os_type, at, machine_state, index, deltas, catalogue, rows)


class InventoryJournal:
    def __init__(self, service: TableServiceClient, outbox: LogOutbox) -> None:
        self._table: TableClient = ensure_table(service, JOURNAL_TABLE)
        self._inventory = UpdateInventory(service)
        self._outbox = outbox

    def put(self, journal: str, entry: JournalEntry) -> None:
        """Keep one scan's entry (an upsert: a redelivered activity writes the same entity)."""
        text = entry.to_json()
        if len(text) > MAX_ENTRY_CHARS:
            self._queue_rows(entry.rows, entry.at)
            entry.rows = {}
            text = entry.to_json()
        millis = int(entry.at.timestamp() * 1000)
        self._table.upsert_entity({"PartitionKey": journal, "RowKey": f"{entry.machine_key}|{millis:015d}",
                                   **split_property("Entry", text)})

    def apply(self, journals: Sequence[str], at: datetime, carried: Sequence[JournalEntry] = (),
              carried_rows: Mapping[str, Sequence[dict[str, Any]]] | None = None,
              complete: Completion | None = None,
              on_new_versions: NewVersions | None = None) -> dict[str, int]:
        """Apply batches' journals to the fleet-wide tables together (each once; again is a no-op).

        Several batches at once share their transactions: a reverse-index partition (one update) or a
        subscription's Machines takes one transaction for all of them, not one per batch. ``carried``:
        entries of these journals kept elsewhere (:func:`carried_columns`); ``carried_rows``: Log
        Analytics rows (by table) to queue with them; both only when the journals are not applied yet.
        ``complete``: records the machines of the entries awaiting a list (``awaiting_list``), all in one
        call (one Resource Graph read), and answers their recorded entries, which are applied instead.
        ``on_new_versions``: told of the update versions the catalogue did not hold (apply_catalogue).
        """
        todo = [j for j in journals if not self._applied(j)]
        if not todo:
            return {"entries": 0, "alreadyApplied": len(journals)}
        entities = sorted((e for j in todo for e in self._table.query_entities(
            "PartitionKey eq @p", parameters={"p": j})), key=lambda e: str(e["RowKey"]))  # fmt: skip
        entries = [JournalEntry.from_json(join_property(e, "Entry")) for e in entities
                   if e["RowKey"] != APPLIED_ROW]
        entries = self._completed(entries, complete)
        entries += carried
        self._inventory.ensure()
        rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for table, table_rows in (carried_rows or {}).items():
            rows[table].extend(table_rows)
        states: dict[str, dict[str, Any]] = {}
        index: dict[tuple[str, str], dict[str, Any]] = {}
        deltas: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        fields: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        # Every version the batch brought per update (machines may be offered different ones).
        versions: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
        for entry in sorted(entries, key=lambda e: (e.machine_key, e.at)):  # a machine's later scan wins
            for table, table_rows in entry.rows.items():
                rows[table].extend(table_rows)
            states[entry.machine_key] = entry.machine_state
            for item in entry.index:
                index[(item["PartitionKey"], item["RowKey"])] = item
            for key, delta in entry.deltas.items():
                deltas[entry.os_type][key] += delta
            fields[entry.os_type].update(entry.catalogue)
            if on_new_versions is not None:
                for key, seen in entry.catalogue.items():
                    versions[entry.os_type][key].append(seen)
        self._queue_rows(rows, at)
        self._inventory.apply_machine_states(states.values())
        self._inventory.apply_index(index.values())
        token = _token(todo)
        for os_type in sorted(set(deltas) | set(fields)):
            self._inventory.apply_catalogue(os_type, deltas[os_type], fields[os_type], token,
                                            on_new_versions, versions[os_type])
        for journal in todo:
            self._table.upsert_entity({"PartitionKey": journal, "RowKey": APPLIED_ROW, "AppliedAt": at,
                                       "AppliedAs": token})
        return {"entries": len(entries), "machines": len(states), "indexed": len(index),
                "rows": sum(len(r) for r in rows.values())}

    def put_or_carry(self, journal: str, entry: JournalEntry, prefix: str) -> dict[str, Any]:
        """The columns that carry ``entry`` in an entity its caller writes anyway (:func:`carried_columns`),
        or, for an entry too long to carry, nothing: it is kept in the journal table (:meth:`put`)."""
        columns = carried_columns(prefix, entry.to_json())
        if columns is None:
            self.put(journal, entry)
            return {}
        return columns

    @staticmethod
    def _completed(entries: list[JournalEntry], complete: Completion | None) -> list[JournalEntry]:
        """``entries`` with those awaiting a list replaced by what ``complete`` recorded for them. Not
        kept back in the journal: a retried application records them again, which rewrites the same
        entities (one more Resource Graph read per application, not a Table write per machine)."""
        waiting = [n for n, e in enumerate(entries) if e.awaiting_list is not None]
        if not waiting:
            return entries
        if complete is None:
            raise ValueError(f"{len(waiting)} journal entries await their machine's recording: pass complete")
        completed = list(entries)
        for n, entry in zip(waiting, complete([entries[n] for n in waiting]), strict=True):
            completed[n] = entry
        return completed

    def applied(self, journal: str) -> bool:
        """Whether ``journal`` has been applied (:meth:`apply` would do nothing for it)."""
        return self._applied(journal)

    def _applied(self, journal: str) -> bool:
        try:
            self._table.get_entity(journal, APPLIED_ROW)
        except ResourceNotFoundError:
            return False
        return True

    def _queue_rows(self, rows: Mapping[str, list[dict[str, Any]]], at: datetime) -> None:
        for name, table_rows in rows.items():
            table: LogTable = _TABLES[name]
            self._outbox.put(table, table_rows, at)


def carried_columns(prefix: str, text: str) -> dict[str, Any] | None:
    """``text`` (an entry's or rows' JSON) as columns ``{prefix}0``, ... of another entity; None when
    longer than MAX_CARRIED_CHARS."""
    return split_property(prefix, text) if len(text) <= MAX_CARRIED_CHARS else None


def carried_text(entity: Mapping[str, Any], prefix: str) -> str | None:
    """The text :func:`carried_columns` left in ``entity`` under ``prefix``, if any."""
    return join_property(entity, prefix) if f"{prefix}Parts" in entity else None


def _token(journals: Sequence[str]) -> str:
    """What the catalogue remembers of one application: the journal, or a digest of the set applied
    together (a retried activity applies the same set, so it finds its token)."""
    if len(journals) == 1:
        return journals[0]
    return "set:" + hashlib.sha256("\n".join(sorted(journals)).encode()).hexdigest()[:32]


def _typed(entity: Mapping[str, Any]) -> dict[str, Any]:
    """Entity properties as JSON, date-times marked so they come back as date-times (Edm.DateTime)."""
    return {k: {"$dt": v.isoformat()} if isinstance(v, datetime) else v for k, v in entity.items()}


def _untyped(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: datetime.fromisoformat(v["$dt"]) if isinstance(v, dict) and "$dt" in v else v
            for k, v in data.items()}
