"""Test evidence and each machine's change history in Table Storage.

- ``PatchEvidence``: PartitionKey ``<category>|<PatchRef.table_key>`` (one update in one category: the
  partition the state rule reads whole), RowKey the machine key; ``Outcome`` (installed | failed),
  ``Reason``, ``RunId``, ``At``. A machine's later record replaces its earlier one (a rerun after a fix).
- ``MachineChanges``: PartitionKey the machine key, RowKey ``<inverted ms>|<table_key>`` (newest first);
  every update a deployment tried on the machine: ``Status`` as UpdateRunProgress_CL's InstallationStatus,
  the run, the deployment, and ``AuthorizedBy`` (shared.governance.evidence.authorized_by).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.data.tables import TableServiceClient, UpdateMode

from shared.azure.tables import (
    decode_page_token,
    encode_page_token,
    ensure_table,
    table_service,
    upsert_in_batches,
)
from shared.governance.evidence import EvidenceRecord, Outcome, inverted_ms
from shared.governance.patch_refs import PatchRef, parse_table_key
from shared.settings import Settings

PATCH_EVIDENCE_TABLE = "PatchEvidence"
MACHINE_CHANGES_TABLE = "MachineChanges"


def evidence_partition(category: str, ref: PatchRef) -> str:
    return f"{category.lower()}|{ref.table_key}"


class EvidenceStore:
    def __init__(self, service: TableServiceClient) -> None:
        self._service = service
        self._table = service.get_table_client(PATCH_EVIDENCE_TABLE)

    def ensure(self) -> None:
        ensure_table(self._service, PATCH_EVIDENCE_TABLE)

    def record(self, category: str, records: Iterable[EvidenceRecord]) -> int:
        return upsert_in_batches(self._table, (
            {"PartitionKey": evidence_partition(category, r.ref), "RowKey": r.machine, "Category": category,
             "Update": r.ref.table_key, "Outcome": r.outcome.value, "Reason": r.reason[:4000],
             "RunId": r.run_id, "At": r.at, "Computer": r.computer}
            for r in records
        ), mode=UpdateMode.REPLACE)  # fmt: skip

    def records(self, category: str, ref: PatchRef) -> list[EvidenceRecord]:
        partition = evidence_partition(category, ref)
        rows = self._table.query_entities("PartitionKey eq @p", parameters={"p": partition})
        return [EvidenceRecord(ref, str(row["RowKey"]), Outcome(row["Outcome"]), row["At"], str(row["RunId"]),
                               str(row.get("Reason") or ""), str(row.get("Computer") or "")) for row in rows]

    def updates_of(self, category: str) -> list[PatchRef]:
        """Every update with evidence in ``category`` (the timer's scan for bake times that ended)."""
        prefix = f"{category.lower()}|"
        rows = self._table.query_entities(
            "PartitionKey ge @lo and PartitionKey lt @hi", parameters={"lo": prefix, "hi": prefix[:-1] + "}"},
            select=["PartitionKey"],
        )
        return sorted({parse_table_key(str(row["PartitionKey"]).removeprefix(prefix)) for row in rows})


class ChangeStore:
    def __init__(self, service: TableServiceClient) -> None:
        self._service = service
        self._table = service.get_table_client(MACHINE_CHANGES_TABLE)

    def ensure(self) -> None:
        ensure_table(self._service, MACHINE_CHANGES_TABLE)

    def record(self, changes: Iterable[Mapping[str, Any]]) -> int:
        return upsert_in_batches(self._table, changes, mode=UpdateMode.REPLACE)

    def history(self, machine: str) -> list[dict[str, Any]]:
        """The machine's changes, newest first."""
        rows = self._table.query_entities("PartitionKey eq @p", parameters={"p": machine})
        return [dict(row) for row in rows]

    def page(self, machine: str, page_size: int, token: str | None) -> ChangePage:
        """One page of the machine's changes, newest first; ``token`` the ``next_token`` of the page before
        (Table Storage's continuation, made opaque). A token this store did not issue is a ValueError."""
        pages = self._table.query_entities(
            "PartitionKey eq @p", parameters={"p": machine}, results_per_page=page_size
        ).by_page(continuation_token=decode_page_token(token))
        rows = [dict(row) for row in next(pages, [])]
        return ChangePage(rows, encode_page_token(getattr(pages, "continuation_token", None)))


@dataclass(frozen=True)
class ChangePage:
    rows: list[dict[str, Any]]
    next_token: str | None



def change_row(machine: str, ref: PatchRef, row: Mapping[str, Any], at: datetime, authorized: str,
               category: str, ring: str) -> dict[str, Any]:
    """A MachineChanges row from an UpdateRunProgress_CL row (wire form) of the machine."""
    return {
        "PartitionKey": machine, "RowKey": f"{inverted_ms(at)}|{ref.table_key}",
        "OsType": ref.os_type.value, "Key": ref.key, "KBID": ref.kb or "", "PackageName": ref.package or "",
        "PackageVersion": ref.version or "", "Title": str(row.get("UpdateTitle") or ""),
        "Classification": str(row.get("Classification") or ""),
        "Status": str(row.get("InstallationStatus") or ""), "At": at,
        "RunId": str(row.get("UpdateRunId") or ""), "Deployment": str(row.get("UpdateRunName") or ""),
        "AuthorizedBy": authorized, "Category": category, "Ring": ring,
    }  # fmt: skip


def evidence_store(settings: Settings) -> EvidenceStore:
    store = EvidenceStore(table_service(settings))
    store.ensure()
    return store


def change_store(settings: Settings) -> ChangeStore:
    store = ChangeStore(table_service(settings))
    store.ensure()
    return store
