"""What each machine is missing, kept in Table Storage, with the history of every gap.

Tables and keys, each chosen for the reads that use it:

- ``Machines`` (owned by :mod:`shared.fleet.machines_table`; PartitionKey = subscription id, RowKey =
  machine key): assessments MERGE their state into the machine's entity (last assessed,
  compliance, missing counts by classification, reboot pending, readiness, last error), so
  discovery's properties stay as they are.
- ``MachineUpdates``: PartitionKey = machine key, RowKey = update key ("KB<digits>" on
  Windows, the package name on Linux). One machine's gaps are one partition read ("this
  machine's missing updates"). An update that a later assessment no longer lists is marked
  ``Not needed`` with ``NoLongerNeededSince``; it is never deleted.
- ``UpdateMachines``: PartitionKey = "<OS>|<update key>", RowKey = machine key, State. The
  reverse index: "how many machines need this update" is one partition read instead of a
  scan of every machine's partition.
- ``UpdateCatalogue``: PartitionKey = OS type, RowKey = update key. Distinct updates with
  ``MachinesNeeding``, classification, title, KB or package and a link; the fleet-wide
  "missing updates" view reads it. Only updates whose state changed on a machine are
  recounted, with an ETag check so two machines recounting at once cannot leave a stale count.
- ``AssessmentHistory``: PartitionKey = machine key, RowKey = inverted milliseconds since
  the epoch, so a partition reads newest first and "the last assessment before time T" is
  the first entity with RowKey >= inverted(T).

Everything is idempotent: recording the same assessment again writes the same entities.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableServiceClient, UpdateMode

from shared.assessment.records import MachineAssessmentSummary, UpdateRecord, UpdateState
from shared.azure.tables import ensure_table, upsert_in_batches
from shared.fleet.machines_table import MACHINES_TABLE
from shared.model.assessment_outcome import AssessmentFailure, Readiness
from shared.model.machines import Machine

MACHINE_UPDATES_TABLE = "MachineUpdates"
UPDATE_MACHINES_TABLE = "UpdateMachines"
CATALOGUE_TABLE = "UpdateCatalogue"
HISTORY_TABLE = "AssessmentHistory"

# A string property holds at most 64 KiB, i.e. 32 Ki UTF-16 characters, and an entity at most
# 1 MiB and 255 properties (Table service data model). Missing-update keys are spilled over
# numbered properties below those limits; past them the list is cut and flagged.
MAX_PROPERTY_CHARS = 30_000
MAX_SPILL_PROPERTIES = 30
_INVERTED_BASE_MS = 10**13  # above any millisecond timestamp before the year 2286
# Concurrent recounts of one catalogue entry retry on a stale ETag; a handful is plenty.
MAX_RECOUNT_ATTEMPTS = 5

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
    return f"{_INVERTED_BASE_MS - millis:014d}"


def catalogue_partition(os_type: str, key: str) -> str:
    return f"{os_type}|{key}"


class UpdateInventory:
    def __init__(self, service: TableServiceClient) -> None:
        self._machines = service.get_table_client(MACHINES_TABLE)
        self._updates = service.get_table_client(MACHINE_UPDATES_TABLE)
        self._index = service.get_table_client(UPDATE_MACHINES_TABLE)
        self._catalogue = service.get_table_client(CATALOGUE_TABLE)
        self._history = service.get_table_client(HISTORY_TABLE)
        self._service = service

    def ensure(self) -> None:
        """Create the tables if missing (asked once per process and account: see ensure_table)."""
        for name in (MACHINES_TABLE, MACHINE_UPDATES_TABLE, UPDATE_MACHINES_TABLE, CATALOGUE_TABLE,
                     HISTORY_TABLE):
            ensure_table(self._service, name)

    # -- writes --------------------------------------------------------------------------

    def record_assessment(
        self,
        machine: Machine,
        records: list[UpdateRecord],
        summary: MachineAssessmentSummary,
        run_id: str,
        warning: str = "",
    ) -> list[dict[str, Any]]:
        """Write one assessment; return the ``MachineUpdates`` entities it closed (Not needed).

        Count-only assessments (Arc) have no update list, so their gaps are left as they were; a cut
        list (``list_truncated``) opens what it lists and closes nothing, since what it left out may
        still be missing.
        """
        at = summary.assessed_at
        closed: list[dict[str, Any]] = []
        if not summary.counts_only:
            existing = {e["RowKey"]: e for e in self.machine_updates(machine.key)}
            entities, closed = _gap_entities(machine, records, existing, at, run_id,
                                             close_unlisted=not summary.list_truncated)
            # REPLACE: a reopened gap must lose its NoLongerNeededSince.
            upsert_in_batches(self._updates, [_clean(e) for e in entities], UpdateMode.REPLACE)
            self._reindex(machine, [e for e in entities if _changed_at(e, at)])
        self._history.upsert_entity(_history_entity(machine, records, summary, run_id))
        self._machines.upsert_entity(_machine_state(machine, summary, run_id, warning), mode=UpdateMode.MERGE)
        return closed

    def record_failure(self, machine: Machine, failure: AssessmentFailure, at: datetime, run_id: str) -> None:
        """Readiness and the error on the machine entity; its last good assessment stays."""
        entity = _machine_identity(machine) | {
            "Readiness": failure.readiness.value,
            "LastError": f"{failure.code}: {failure.message}",
            "LastErrorCode": failure.code,
            "LastErrorHint": failure.hint,
            "LastErrorAt": at,
            "LastErrorRun": run_id,
        }
        self._machines.upsert_entity(entity, mode=UpdateMode.MERGE)

    def _reindex(self, machine: Machine, changed: list[dict[str, Any]]) -> None:
        """Reverse index first, then recount: a recount always sees this machine's new state."""
        for entity in changed:
            partition = catalogue_partition(machine.os_type.value, entity["RowKey"])
            self._index.upsert_entity(
                {
                    "PartitionKey": partition,
                    "RowKey": machine.key,
                    "State": entity["State"],
                    "ResourceId": machine.resource_id,
                    "Computer": machine.computer_name,
                },
                mode=UpdateMode.REPLACE,
            )
        for entity in changed:
            self._recount(machine.os_type.value, entity)

    def _recount(self, os_type: str, gap: Mapping[str, Any]) -> None:
        key = gap["RowKey"]
        for _ in range(MAX_RECOUNT_ATTEMPTS):
            try:
                current = self._catalogue.get_entity(os_type, key)
            except ResourceNotFoundError:
                current = None
            entry = _catalogue_entity(os_type, gap) | {"MachinesNeeding": self._count_needing(os_type, key)}
            try:
                if current is None:
                    self._catalogue.create_entity(entry)
                else:
                    self._catalogue.update_entity(
                        entry,
                        mode=UpdateMode.MERGE,
                        etag=current.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
                return
            except (ResourceExistsError, ResourceModifiedError):
                continue  # another machine recounted meanwhile: count again
        raise RuntimeError(
            f"{CATALOGUE_TABLE} {os_type}/{key}: the count changed under {MAX_RECOUNT_ATTEMPTS} recounts"
        )

    def _count_needing(self, os_type: str, key: str) -> int:
        rows = self._index.query_entities(
            "PartitionKey eq @p and State eq @s",
            parameters={"p": catalogue_partition(os_type, key), "s": UpdateState.NEEDED.value},
            select=["RowKey"],
        )
        return sum(1 for _ in rows)

    # -- reads ---------------------------------------------------------------------------

    def machine_updates(self, key: str) -> Iterator[dict[str, Any]]:
        for entity in self._updates.query_entities("PartitionKey eq @p", parameters={"p": key}):
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

    def history(self, key: str) -> Iterator[dict[str, Any]]:
        """Newest first."""
        for entity in self._history.query_entities("PartitionKey eq @p", parameters={"p": key}):
            yield dict(entity)

    def compliance_on(self, key: str, day: date) -> bool | None:
        """Whether the machine was compliant at the end of ``day`` (UTC): the verdict of its
        last assessment up to then. None when it had not been assessed by then."""
        next_day = datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)
        end_of_day = next_day - timedelta(milliseconds=1)
        latest = self._history.query_entities(
            "PartitionKey eq @p and RowKey ge @r",
            parameters={"p": key, "r": history_row_key(end_of_day)},
            results_per_page=1,
            select=["Compliant"],
        )
        first = next(iter(latest), None)
        return None if first is None else bool(first["Compliant"])


def missing_keys(entity: Mapping[str, Any]) -> list[str]:
    """The update keys an ``AssessmentHistory`` entity lists, joined from its spill properties."""
    parts = int(entity.get("MissingKeysParts", 0))
    text = "".join(entity[f"MissingKeys{i}"] for i in range(parts))
    return list(json.loads(text)) if text else []


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


def _catalogue_entity(os_type: str, gap: Mapping[str, Any]) -> dict[str, Any]:
    names = ("Title", "KBID", "PackageName", "Classification", "Optional", "MoreInfoUrl", "PublishedDate")
    return {"PartitionKey": os_type, "RowKey": gap["RowKey"], "OsType": os_type} | {
        n: gap[n] for n in names if gap.get(n) is not None
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
        "Compliant": summary.compliant,
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


def _changed_at(entity: Mapping[str, Any], at: datetime) -> bool:
    """Opened or closed by the assessment at ``at`` (true again on a retry of it)."""
    if entity["State"] == UpdateState.NEEDED.value:
        return _same_moment(entity["FirstSeenMissing"], at)
    return _same_moment(entity.get("NoLongerNeededSince"), at)


def _same_moment(value: Any, at: datetime) -> bool:
    # Table Storage keeps datetimes to the 100 ns tick, Python to the microsecond: equal round trip.
    return isinstance(value, datetime) and value == at


def _clean(entity: Mapping[str, Any]) -> dict[str, Any]:
    """Drop read-back metadata, keep what is written."""
    return {k: v for k, v in entity.items() if v is not None}


__all__ = [
    "CATALOGUE_TABLE",
    "HISTORY_TABLE",
    "MACHINE_UPDATES_TABLE",
    "UPDATE_MACHINES_TABLE",
    "UpdateInventory",
    "UpdateState",
    "history_row_key",
    "missing_keys",
]
