"""What each machine is missing, kept in Table Storage, with the history of every gap.

Tables and keys, each chosen for the reads that use it:

- ``Machines`` (owned by :mod:`shared.fleet.machines_table`; PartitionKey = subscription id, RowKey =
  machine key): assessments MERGE their state into the machine's entity (last assessed,
  compliance, missing counts by classification, reboot pending, readiness, last error), so
  discovery's properties stay as they are. Written once per batch (:mod:`shared.assessment.journal`).
- ``MachineUpdates``: PartitionKey = machine key. One partition holds everything about one machine, so
  that recording a scan is one read and one transaction:

  - a gap per update, RowKey = update key ("KB<digits>" on Windows, the package name on Linux). An
    update that a later assessment no longer lists is marked ``Not needed`` with ``NoLongerNeededSince``;
    it is never deleted;
  - ``~current``: how the machine was last recorded (the assessment that last sent its full state to Log
    Analytics, a fingerprint of its summary);
  - ``~history|<inverted milliseconds>``: one entity per assessment that changed something and at least
    one per UTC day, newest first, so "the last assessment before time T" is the first entity with
    RowKey >= ``~history|`` + inverted(T). An assessment that changed nothing since the day's first one
    writes nothing: the history's verdict is the same.

  Gap keys sort below ``~`` (KB numbers and package names begin with a letter or digit), so the gaps
  are one RowKey range and ``~current`` comes with them in one read.
- ``UpdateMachines``: PartitionKey = "<OS>|<update key>", RowKey = machine key, State. The
  reverse index: "how many machines need this update" is one partition read instead of a
  scan of every machine's partition. Written once per batch, in transactions per partition.
- ``UpdateCatalogue``: PartitionKey = OS type, RowKey = update key. Distinct updates with
  ``MachinesNeeding``, classification, title, KB or package and a link; the fleet-wide
  "missing updates" view reads it. Counts change once per batch by the batch's delta (gaps opened minus
  gaps closed), under ETags, never recounted by a query over the machines: see
  :meth:`UpdateInventory.apply_catalogue`.

Everything is idempotent: recording the same assessment again writes the same entities.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import islice
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableServiceClient, TableTransactionError, UpdateMode

from shared.assessment.records import MachineAssessmentSummary, UpdateRecord, UpdateState
from shared.azure.tables import MAX_TRANSACTION_ENTITIES, ensure_table, upsert_in_batches
from shared.fleet.machines_table import MACHINES_TABLE
from shared.model.assessment_outcome import AssessmentFailure, Readiness
from shared.model.machines import Machine

MACHINE_UPDATES_TABLE = "MachineUpdates"
UPDATE_MACHINES_TABLE = "UpdateMachines"
CATALOGUE_TABLE = "UpdateCatalogue"

# Rows of a machine's MachineUpdates partition besides its gaps (see the module docstring).
CURRENT_ROW = "~current"
HISTORY_PREFIX = "~history|"
_HISTORY_END = "~history}"  # "}" follows "|": every history RowKey sorts below it
_GAPS_END = "~"

# A string property holds at most 64 KiB, i.e. 32 Ki UTF-16 characters, and an entity at most
# 1 MiB and 255 properties (Table service data model). Missing-update keys are spilled over
# numbered properties below those limits; past them the list is cut and flagged.
MAX_PROPERTY_CHARS = 30_000
MAX_SPILL_PROPERTIES = 30
_INVERTED_BASE_MS = 10**13  # above any millisecond timestamp before the year 2286
# A catalogue entry remembers the batches whose delta it took, so a batch applied again after a crash
# (between the catalogue's commit and the batch's "applied" mark) is not counted twice. Redelivery
# comes within minutes; 200 batches is a 20,000-machine cycle touching one update meanwhile.
MAX_APPLIED_BATCHES = 200
# Concurrent batches changing one catalogue entry retry on a stale ETag; a handful is plenty.
MAX_CATALOGUE_ATTEMPTS = 8

# Gap properties that describe the update (a change to one is written; the rest is bookkeeping).
_CONTENT = ("UpdateId", "Title", "KBID", "PackageName", "PackageVersion", "Product", "Classification",
            "Optional", "RebootBehavior", "PublishedDate", "MoreInfoUrl")

# Entity property suffixes of the per-classification counts ("MissingCritical", ...).
COUNT_PROPERTIES = {
    "Critical Updates": "Critical",
    "Security Updates": "Security",
    "Update Rollups": "UpdateRollups",
    "Feature Packs": "FeaturePacks",
    "Service Packs": "ServicePacks",
    "Definition Updates": "Definition",
    "Tools": "Tools",
    "Updates": "Updates",
    "Other Updates": "Other",
}


def history_row_key(at: datetime) -> str:
    millis = int(at.timestamp() * 1000)
    return f"{HISTORY_PREFIX}{_INVERTED_BASE_MS - millis:014d}"


def catalogue_partition(os_type: str, key: str) -> str:
    return f"{os_type}|{key}"


@dataclass
class RecordedScan:
    """What recording one scan changed in the machine's partition, for the batch's index, catalogue and
    Log Analytics rows (:mod:`shared.assessment.journal`)."""

    opened: list[dict[str, Any]] = field(default_factory=list)  # gaps this scan opened
    closed: list[dict[str, Any]] = field(default_factory=list)  # gaps this scan closed (Not needed)
    revised: list[dict[str, Any]] = field(default_factory=list)  # open gaps whose update changed
    full_state: bool = False  # the first scan of the UTC day: every open gap goes to Log Analytics
    machine_state: dict[str, Any] = field(default_factory=dict)  # the Machines entity's new state

    @property
    def changed_keys(self) -> set[str]:
        return {str(e["RowKey"]) for e in (*self.opened, *self.closed, *self.revised)}


@dataclass(frozen=True)
class NewVersion:
    """An update version the catalogue had not held: a new entry, or an entry whose KB or package version
    changed (the governed inventory records it, shared.governance). ``machines_needing`` is the entry's
    count after the batch (for a Linux package: machines needing the package, at any version)."""

    os_type: str
    key: str  # the update key: KB<digits> or the package name
    fields: Mapping[str, Any]  # catalogue fields: Title, KBID, PackageName, PackageVersion, Classification
    machines_needing: int


# Told the batch's new versions before the catalogue commits them: a retried application tells again
# (what it calls must be idempotent), one that crashed after the commit has already told.
NewVersions = Callable[[list[NewVersion]], None]


class UpdateInventory:
    def __init__(self, service: TableServiceClient) -> None:
        self._machines = service.get_table_client(MACHINES_TABLE)
        self._updates = service.get_table_client(MACHINE_UPDATES_TABLE)
        self._index = service.get_table_client(UPDATE_MACHINES_TABLE)
        self._catalogue = service.get_table_client(CATALOGUE_TABLE)
        self._service = service

    def ensure(self) -> None:
        """Create the tables if missing (asked once per process and account: see ensure_table)."""
        for name in (MACHINES_TABLE, MACHINE_UPDATES_TABLE, UPDATE_MACHINES_TABLE, CATALOGUE_TABLE):
            ensure_table(self._service, name)

    # -- one machine's scan: one read, at most one transaction -------------------------------------

    def record_assessment(
        self,
        machine: Machine,
        records: list[UpdateRecord],
        summary: MachineAssessmentSummary,
        run_id: str,
        warning: str = "",
    ) -> RecordedScan:
        """Write one scan into the machine's partition; the Machines entity, the reverse index and the
        catalogue follow per batch from what this returns.

        Count-only assessments (Arc) have no update list, so their gaps are left as they were; a cut
        list (``list_truncated``) opens what it lists and closes nothing, since what it left out may
        still be missing. A scan that changes nothing since the day's first writes nothing.
        """
        at = summary.assessed_at
        found = {
            str(e["RowKey"]): dict(e)
            for e in self._updates.query_entities(
                "PartitionKey eq @p and RowKey lt @end", parameters={"p": machine.key, "end": HISTORY_PREFIX}
            )
        }
        current = found.pop(CURRENT_ROW, None)
        scan = RecordedScan(machine_state=_machine_state(machine, summary, run_id, warning))
        full_at = current.get("FullStateAt") if current else None
        scan.full_state = (not isinstance(full_at, datetime) or _same_moment(full_at, at)
                           or full_at.date() < at.date())
        entities: list[dict[str, Any]] = []
        if not summary.counts_only:
            entities, scan.closed = _gap_entities(machine, records, found, at, run_id,
                                                  close_unlisted=not summary.list_truncated)
            for entity in entities:
                if entity["State"] != UpdateState.NEEDED.value:
                    continue
                if _same_moment(entity["FirstSeenMissing"], at):
                    scan.opened.append(entity)
                elif _content(entity) != _content(found.get(entity["RowKey"], {})):
                    scan.revised.append(entity)
        fingerprint = _fingerprint(summary)
        retry = current is not None and _same_moment(current.get("RecordedAt"), at)
        unchanged = not (scan.changed_keys or scan.full_state or retry) and current is not None and (
            current.get("Fingerprint") == fingerprint)
        if unchanged:
            return scan
        writes = [_clean(e) for e in (*scan.opened, *scan.revised, *scan.closed)]
        writes.append(_history_entity(machine, records, summary, run_id))
        writes.append({
            "PartitionKey": machine.key, "RowKey": CURRENT_ROW, "RecordedAt": at, "RunId": run_id,
            "FullStateAt": at if scan.full_state else full_at, "Fingerprint": fingerprint,
        })
        # REPLACE: a reopened gap must lose its NoLongerNeededSince. The bookkeeping rows go last, so a
        # crash between two transactions leaves a state whose retry recomputes the same writes.
        iterator = iter(writes)
        while chunk := list(islice(iterator, MAX_TRANSACTION_ENTITIES)):
            self._updates.submit_transaction([("upsert", e, {"mode": UpdateMode.REPLACE}) for e in chunk])
        return scan

    # -- per batch: the Machines entities, the reverse index, the catalogue ------------------------

    def apply_machine_states(self, states: Iterable[Mapping[str, Any]]) -> int:
        """MERGE machines' new states, in transactions per subscription."""
        return upsert_in_batches(self._machines, states, UpdateMode.MERGE)

    def apply_index(self, entries: Iterable[Mapping[str, Any]]) -> int:
        """Reverse-index entities, in transactions per update (partition)."""
        return upsert_in_batches(self._index, entries, UpdateMode.REPLACE)

    def apply_catalogue(
        self, os_type: str, deltas: Mapping[str, int], fields: Mapping[str, Mapping[str, Any]], batch: str,
        on_new_versions: NewVersions | None = None,
        versions: Mapping[str, Iterable[Mapping[str, Any]]] | None = None,
    ) -> int:
        """Change each update's ``MachinesNeeding`` by the batch's delta, under ETags, once per ``batch``.

        The OS's catalogue partition is read once (its size is the number of distinct updates, not of
        machines); entries go in transactions of 100. A transaction that loses a race (another batch
        changed an entry since the read) is read again and retried; after a few lost races its entries
        go one by one, so one busy entry cannot hold the others back.

        ``on_new_versions`` is told of the versions (``versions``: every one the batch brought per key,
        else ``fields``) that the catalogue entry does not hold yet (a new entry, or another KB or package
        version), before the commit. Only keys with ``fields`` (gaps the batch opened or revised) are
        compared: an unchanged entry costs nothing more.
        """
        pending = {k: d for k, d in deltas.items()} | {k: 0 for k in fields if k not in deltas}
        told: set[tuple[str, Any, Any]] = set()
        for _ in range(MAX_CATALOGUE_ATTEMPTS):
            if not pending:
                return len(deltas)
            current = self._catalogue_entries(os_type, pending)
            if on_new_versions is not None:
                new = _new_versions(os_type, pending, fields, versions or {}, current, told)
                if new:
                    on_new_versions(new)
            operations = []
            for key in sorted(pending):
                operation = _catalogue_operation(os_type, key, pending[key], fields.get(key, {}),
                                                 current.get(key), batch)
                if operation is None:
                    pending.pop(key)
                else:
                    operations.append((key, operation))
            lost = False
            iterator = iter(operations)
            while chunk := list(islice(iterator, MAX_TRANSACTION_ENTITIES)):
                try:
                    self._catalogue.submit_transaction([op for _, op in chunk])
                except TableTransactionError:
                    lost = True
                    self._apply_one_by_one(chunk, pending)
                    continue
                for key, _ in chunk:
                    pending.pop(key, None)
            if not lost:
                break
        if pending:
            raise RuntimeError(f"{CATALOGUE_TABLE} {os_type}: {len(pending)} entries changed under "
                               f"{MAX_CATALOGUE_ATTEMPTS} attempts ({sorted(pending)[:5]}...)")
        return len(deltas)

    def _apply_one_by_one(self, chunk: list[tuple[str, Any]], pending: dict[str, int]) -> None:
        """After a lost transaction: each entry alone, so the ones that did not race get through."""
        for key, (verb, entity, *options) in chunk:
            try:
                if verb == "create":
                    self._catalogue.create_entity(entity)
                else:
                    self._catalogue.update_entity(entity, **(options[0] if options else {}))
            except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
                continue  # read again on the next attempt
            pending.pop(key, None)

    def _catalogue_entries(self, os_type: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = set(keys)
        return {
            str(e["RowKey"]): dict(e) | {"_etag": e.metadata["etag"]}
            for e in self._catalogue.query_entities("PartitionKey eq @p", parameters={"p": os_type},
                                                    select=["RowKey", "MachinesNeeding", "AppliedBatches",
                                                            "KBID", "PackageVersion"])
            if e["RowKey"] in wanted
        }

    # -- reads ---------------------------------------------------------------------------

    def machine_updates(self, key: str) -> Iterator[dict[str, Any]]:
        """The machine's gaps, open and closed."""
        query = "PartitionKey eq @p and RowKey lt @end"
        for entity in self._updates.query_entities(query, parameters={"p": key, "end": _GAPS_END}):
            yield dict(entity)

    def machines_needing(self, os_type: str, key: str) -> Iterator[dict[str, Any]]:
        """The machines that currently miss one update: one partition of the reverse index."""
        query = "PartitionKey eq @p and State eq @s"
        parameters = {"p": catalogue_partition(os_type, key), "s": UpdateState.NEEDED.value}
        for entity in self._index.query_entities(query, parameters=parameters):
            yield dict(entity)

    def catalogue(self) -> Iterator[dict[str, Any]]:
        for entity in self._catalogue.list_entities():
            yield dict(entity)

    def history(self, key: str, until: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Newest first; with ``until``, only the assessments at or before it (one RowKey range, paged
        lazily: a caller that stops early reads no further)."""
        query = "PartitionKey eq @p and RowKey ge @start and RowKey lt @end"
        start = HISTORY_PREFIX if until is None else history_row_key(until)
        parameters = {"p": key, "start": start, "end": _HISTORY_END}
        for entity in self._updates.query_entities(query, parameters=parameters):
            yield dict(entity)

    def compliance_on(self, key: str, day: date) -> bool | None:
        """Whether the machine was compliant at the end of ``day`` (UTC): the verdict of its
        last assessment up to then. None when it had not been assessed by then."""
        next_day = datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)
        end_of_day = next_day - timedelta(milliseconds=1)
        latest = self._updates.query_entities(
            "PartitionKey eq @p and RowKey ge @r and RowKey lt @end",
            parameters={"p": key, "r": history_row_key(end_of_day), "end": _HISTORY_END},
            results_per_page=1,
            select=["Compliant"],
        )
        first = next(iter(latest), None)
        return None if first is None else bool(first["Compliant"])


def missing_keys(entity: Mapping[str, Any]) -> list[str]:
    """The update keys a history entity lists, joined from its spill properties."""
    parts = int(entity.get("MissingKeysParts", 0))
    text = "".join(entity[f"MissingKeys{i}"] for i in range(parts))
    return list(json.loads(text)) if text else []


def index_entity(os_type: str, gap: Mapping[str, Any], machine_key: str, resource_id: str,
                 computer: str) -> dict[str, Any]:
    """A machine's entry under one update in the reverse index."""
    return {"PartitionKey": catalogue_partition(os_type, str(gap["RowKey"])), "RowKey": machine_key,
            "State": gap["State"], "ResourceId": resource_id, "Computer": computer}


def catalogue_fields(gap: Mapping[str, Any]) -> dict[str, Any]:
    """What the catalogue shows of an update, from a machine's gap."""
    names = ("Title", "KBID", "PackageName", "PackageVersion", "Product", "Classification", "Optional",
             "MoreInfoUrl", "PublishedDate")
    return {n: gap[n] for n in names if gap.get(n) is not None}


def failure_state(machine: Machine, failure: AssessmentFailure, at: datetime, run_id: str) -> dict[str, Any]:
    return _machine_identity(machine) | {
        "Readiness": failure.readiness.value,
        "LastError": f"{failure.code}: {failure.message}",
        "LastErrorCode": failure.code,
        "LastErrorHint": failure.hint,
        "LastErrorAt": at,
        "LastErrorRun": run_id,
    }


def _version(fields: Mapping[str, Any]) -> tuple[Any, Any]:
    return (fields.get("KBID") or None, fields.get("PackageVersion") or None)


def _new_versions(
    os_type: str, pending: Mapping[str, int], fields: Mapping[str, Mapping[str, Any]],
    versions: Mapping[str, Iterable[Mapping[str, Any]]], current: Mapping[str, Mapping[str, Any]],
    told: set[tuple[str, Any, Any]],
) -> list[NewVersion]:
    """The versions of ``pending`` keys the catalogue does not hold, not yet ``told`` (which it extends)."""
    new = []
    for key in sorted(pending):
        if key not in fields:
            continue
        entry = current.get(key)
        held = _version(entry) if entry else None
        count = max(0, int((entry or {}).get("MachinesNeeding") or 0) + pending[key])
        for seen in (*versions.get(key, ()), fields[key]):
            version = _version(seen)
            if version == held or (key, *version) in told:
                continue
            told.add((key, *version))
            new.append(NewVersion(os_type, key, dict(seen), count))
    return new


def _catalogue_operation(
    os_type: str, key: str, delta: int, fields: Mapping[str, Any], current: Mapping[str, Any] | None,
    batch: str,
) -> tuple[Any, ...] | None:
    """The transaction operation that applies ``batch``'s delta to one entry; None when it took it."""
    applied = json.loads(str(current.get("AppliedBatches") or "[]")) if current else []
    if batch in applied:
        return None
    count = max(0, int((current or {}).get("MachinesNeeding") or 0) + delta)
    entity = {"PartitionKey": os_type, "RowKey": key, "OsType": os_type, **fields, "MachinesNeeding": count,
              "AppliedBatches": json.dumps([*applied, batch][-MAX_APPLIED_BATCHES:], separators=(",", ":"))}
    if current is None:
        return ("create", entity)
    return ("update", entity, {"mode": UpdateMode.MERGE, "etag": current["_etag"],
                               "match_condition": MatchConditions.IfNotModified})


def _content(entity: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(entity.get(name) or None for name in _CONTENT)


def _fingerprint(summary: MachineAssessmentSummary) -> str:
    properties = _summary_properties(summary)
    text = json.dumps(properties, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# -- entity builders -----------------------------------------------------------------------


def _gap_entities(
    machine: Machine,
    records: Iterable[UpdateRecord],
    existing: Mapping[str, Mapping[str, Any]],
    at: datetime,
    run_id: str,
    close_unlisted: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """New state of the machine's gaps, and those this assessment closed (none unless
    ``close_unlisted``: an update the list does not name is then not known to be installed).

    A gap keeps its FirstSeenMissing while it stays open; one that reopens starts again.
    A retry finds its own earlier writes, so it reproduces the same entities and the same
    closed list (those with NoLongerNeededSince == this assessment).
    """
    entities: list[dict[str, Any]] = []
    seen: set[str] = set()
    for record in records:
        before = existing.get(record.update_key)
        still_open = before is not None and before.get("State") == UpdateState.NEEDED.value
        first = before["FirstSeenMissing"] if still_open and before else at
        entities.append(_gap_entity(machine, record, first, at, run_id))
        seen.add(record.update_key)
    closed: list[dict[str, Any]] = []
    for key, before in existing.items():
        if key in seen or not close_unlisted:
            continue
        if before.get("State") == UpdateState.NEEDED.value:
            entity = dict(before) | {"State": UpdateState.NOT_NEEDED.value, "NoLongerNeededSince": at}
            entities.append(entity)
            closed.append(entity)
        elif _same_moment(before.get("NoLongerNeededSince"), at):
            entities.append(dict(before))  # rewritten, so a retry also redoes the recount
            closed.append(dict(before))
    return entities, closed


def _gap_entity(
    machine: Machine, record: UpdateRecord, first: datetime, at: datetime, run_id: str
) -> dict[str, Any]:
    return {
        "PartitionKey": machine.key,
        "RowKey": record.update_key,
        "ResourceId": machine.resource_id,
        "Computer": machine.computer_name,
        "OsType": machine.os_type.value,
        "UpdateId": record.update_id,
        "Title": record.title,
        "KBID": record.kb_id or "",
        "PackageName": record.package_name or "",
        "PackageVersion": record.package_version or "",
        "Product": record.product,
        "Classification": record.classification.value,
        "Optional": record.optional,
        "RebootBehavior": record.reboot_behavior,
        "PublishedDate": record.published_date,
        "MoreInfoUrl": record.more_info_url or "",
        "State": UpdateState.NEEDED.value,
        "FirstSeenMissing": first,
        "LastSeenMissing": at,
        "LastAssessmentRun": run_id,
    }


def _history_entity(
    machine: Machine, records: Iterable[UpdateRecord], summary: MachineAssessmentSummary, run_id: str
) -> dict[str, Any]:
    entity = {
        "PartitionKey": machine.key,
        "RowKey": history_row_key(summary.assessed_at),
        "ResourceId": machine.resource_id,
        "AssessedAt": summary.assessed_at,
        "RunId": run_id,
        "CountsOnly": summary.counts_only,
    } | _summary_properties(summary)
    return entity | _spill("MissingKeys", sorted(r.update_key for r in records))


def _summary_properties(summary: MachineAssessmentSummary) -> dict[str, Any]:
    counts = {f"Missing{COUNT_PROPERTIES[name]}": n for name, n in summary.missing_by_classification.items()}
    return counts | {
        "MissingTotal": summary.missing_total,
        "MissingOptional": summary.optional_missing,
        # Both stored: Table Storage drops None on write, so "unknown" must be a value of its own;
        # Compliant stays the boolean older readers filter on (False unless proven compliant).
        "Compliant": summary.compliant,
        "Compliance": summary.compliance.value if summary.compliance else None,
        "RebootPending": summary.reboot_pending,
    }


def _spill(name: str, keys: list[str]) -> dict[str, Any]:
    """A JSON list over numbered properties; cut (and flagged) past the entity's limits."""
    text = json.dumps(keys, separators=(",", ":"))
    truncated = False
    while len(text) > MAX_PROPERTY_CHARS * MAX_SPILL_PROPERTIES:
        keys = keys[: len(keys) * 9 // 10]
        text = json.dumps(keys, separators=(",", ":"))
        truncated = True
    parts = [text[i : i + MAX_PROPERTY_CHARS] for i in range(0, len(text), MAX_PROPERTY_CHARS)]
    spilled: dict[str, Any] = {f"{name}{i}": part for i, part in enumerate(parts)}
    return spilled | {f"{name}Parts": len(parts), f"{name}Truncated": truncated}


def _machine_identity(machine: Machine) -> dict[str, Any]:
    return {
        "PartitionKey": machine.subscription_id,
        "RowKey": machine.key,
        "ResourceId": machine.resource_id,
        "Name": machine.name,
        "ComputerName": machine.computer_name,
        "OsType": machine.os_type.value,
        "Environment": machine.environment.value,
    }


def _machine_state(
    machine: Machine, summary: MachineAssessmentSummary, run_id: str, warning: str
) -> dict[str, Any]:
    return (
        _machine_identity(machine)
        | _summary_properties(summary)
        | {
            "LastAssessed": summary.assessed_at,
            "LastAssessmentRun": run_id,
            "Readiness": Readiness.READY.value,
            "LastError": warning,  # a good assessment clears an earlier failure
            "LastErrorCode": "",
            "LastErrorHint": "",
        }
    )


def _same_moment(value: Any, at: datetime) -> bool:
    # Table Storage keeps datetimes to the 100 ns tick, Python to the microsecond: equal round trip.
    return isinstance(value, datetime) and value == at


def _clean(entity: Mapping[str, Any]) -> dict[str, Any]:
    """Drop read-back metadata, keep what is written."""
    return {k: v for k, v in entity.items() if v is not None}


__all__ = [
    "CATALOGUE_TABLE",
    "MACHINE_UPDATES_TABLE",
    "UPDATE_MACHINES_TABLE",
    "UpdateInventory",
    "UpdateState",
    "history_row_key",
    "missing_keys",
]
