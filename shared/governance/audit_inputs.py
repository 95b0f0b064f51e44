"""The audit's inputs, read from the tables for one machine, a category or the fleet, for a past day.

Per machine, three reads of its own partitions, whatever the fleet's size:

- ``MachineUpdates`` (:mod:`shared.assessment.updates_table`): the gaps (one RowKey range: classification,
  title, first seen, closed), and the ``~history|`` rows from the day's end backwards, read lazily and only
  as far as :func:`shared.governance.audit.missing_on` needs;
- ``MachineChanges`` (the deployments' change history, PartitionKey = machine key, RowKey =
  ``<inverted ms>|<key>``, newest first): the installs up to the day's end, one RowKey range.

Per category asked (not per machine): its definition and the set approved for it on that day, each read
once per request. Machines come from the ``Machines`` table, a page at a time (``pageSize`` of at most
``shared.fleet.machine_query.MAX_PAGE_SIZE``, then ``nextToken``), filtered by the table service on
``AssetCategory``; their partitions are read :data:`READ_WORKERS` at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from azure.data.tables import TableServiceClient

from shared.assessment.updates_table import UpdateInventory, missing_keys
from shared.azure.log_outbox import log_outbox
from shared.azure.tables import ensure_table, table_service
from shared.fleet.machines_table import MachineInventory
from shared.fleet.placement import ASSET_CATEGORY, RING
from shared.governance.audit import (
    DEFAULT_PAGE_SIZE,
    AuditError,
    CategoryFacts,
    CompliancePageInput,
    CompliancePageResult,
    Finding,
    GapFacts,
    HistoryPoint,
    InstallFacts,
    MachineAudit,
    MachineFacts,
    audit_machine,
    category_facts,
    compliance_row,
    end_of_day,
    missing_on,
)
from shared.governance.categories import UNCATEGORISED, AssetCategory
from shared.governance.categories_table import CategoryNotFound, category_store
from shared.governance.deadline_warnings import DeadlineWarningStore, page_id
from shared.governance.deadlines import warnings_of
from shared.governance.evidence import inverted_ms
from shared.governance.evidence_table import MACHINE_CHANGES_TABLE
from shared.governance.patch_refs import PatchRef, PatchRefError, parse_patch_ref, ref_of_row
from shared.governance.patches_table import patch_inventory
from shared.log_tables import PATCH_COMPLIANCE
from shared.model.machines import OsType
from shared.settings import Settings

# The daily rows are written a page per activity call: 500 machines is seconds of reads (READ_WORKERS at a
# time) and 5 outbox envelopes, far inside an activity's time limit (AZURE-FACTS, Function timeout).
COMPLIANCE_PAGE_SIZE = 500
# Machines whose partitions are read at once: each read is one round trip of tens of milliseconds, and the
# account takes 20,000 transactions/s (AZURE-FACTS, Table Storage), so 8 keep a 1,000-machine page to
# seconds without crowding the runs that share the account.
READ_WORKERS = 8

ApprovedFor = Callable[[str, datetime], Collection[PatchRef]]
CategoryNamed = Callable[[str], AssetCategory | None]


def changes_row_key_from(moment: datetime) -> str:
    """The first MachineChanges RowKey at or before ``moment`` (newer rows sort before it)."""
    return inverted_ms(moment)


def audit_reader(settings: Settings, service: TableServiceClient) -> AuditReader:
    """The reader over the app's tables: categories from ``AssetCategories``, approvals from
    ``PatchInventory``."""
    categories = category_store(settings, service)
    patches = patch_inventory(settings)

    def category_named(name: str) -> AssetCategory | None:
        try:
            return categories.get(name).category
        except CategoryNotFound:
            return None

    return AuditReader(service, patches.approved, category_named)


@dataclass(frozen=True)
class AuditPage:
    audits: list[MachineAudit]
    next_token: str | None


class AuditReader:
    """Reads and judges; ``approved_for(category, at)`` and ``category_named(name)`` come from the patch
    inventory and the categories (each asked once per category and request)."""

    def __init__(self, service: TableServiceClient, approved_for: ApprovedFor,
                 category_named: CategoryNamed) -> None:
        self._service = service
        self._updates = UpdateInventory(service)
        self._machines = MachineInventory(service)
        self._changes = ensure_table(service, MACHINE_CHANGES_TABLE)
        self._approved_for = approved_for
        self._category_named = category_named
        self._categories: dict[str, CategoryFacts] = {}
        self._approved: dict[str, frozenset[PatchRef]] = {}

    # -- which machines ------------------------------------------------------------------------

    def machine(self, entity: Mapping[str, Any], day: date, as_of: datetime) -> MachineAudit:
        return self._audit(entity, day, as_of)

    def page(self, day: date, as_of: datetime, category: str | None = None,
             page_size: int = DEFAULT_PAGE_SIZE, token: str | None = None) -> AuditPage:
        """One page of the fleet's machines, or of one category's (``uncategorised``: those no category
        took), each audited."""
        equals: dict[str, str | bool] = {}
        if category is not None and category.lower() != UNCATEGORISED:
            named = self._category_named(category)  # the name as the placement writes it
            equals[ASSET_CATEGORY] = named.name if named else category
        try:
            found = self._machines.page(equals, page_size, token)
        except ValueError as error:  # a token this API did not issue, a page size out of bounds
            raise AuditError("nextToken" if token else "pageSize", str(error)) from None
        entities = found.machines
        if category is not None and category.lower() == UNCATEGORISED:
            entities = [e for e in entities if placement(e)[0] == UNCATEGORISED]
        for name in sorted({placement(e)[0] for e in entities}):  # each category's reads once, up front
            self._category(name)
            self._approved_on(name, as_of)
        with ThreadPoolExecutor(max_workers=READ_WORKERS) as pool:
            audits = list(pool.map(lambda e: self._audit(e, day, as_of), entities))
        return AuditPage(audits, found.next_token)

    # -- one machine ---------------------------------------------------------------------------

    def _audit(self, entity: Mapping[str, Any], day: date, as_of: datetime) -> MachineAudit:
        machine = machine_facts(entity)
        category = self._category(machine.category)
        gaps = {str(g["RowKey"]): gap_facts(g) for g in self._updates.machine_updates(machine.key)}
        history = (history_point(h) for h in self._updates.history(machine.key, until=as_of))
        missing = missing_on(as_of, history, gaps)
        installs = list(self.installs(machine.key, machine.os_type, as_of))
        approved = self._approved_on(machine.category, as_of)
        return audit_machine(day, as_of, machine, category, missing, installs, approved)

    def installs(self, key: str, os_type: OsType, until: datetime) -> Iterator[InstallFacts]:
        """The machine's install attempts at or before ``until``, newest first."""
        query = "PartitionKey eq @p and RowKey ge @from"
        rows = self._changes.query_entities(query, parameters={"p": key, "from": changes_row_key_from(until)})
        for row in rows:
            found = install_facts(os_type, dict(row))
            if found is not None and found.at <= until:
                yield found

    def category_exists(self, name: str) -> bool:
        return name.lower() == UNCATEGORISED or self._category_named(name) is not None

    def _category(self, name: str) -> CategoryFacts:
        if name not in self._categories:
            found = None if name == UNCATEGORISED else self._category_named(name)
            self._categories[name] = category_facts(found) if found else CategoryFacts(name=name)
        return self._categories[name]

    def _approved_on(self, category: str, at: datetime) -> frozenset[PatchRef]:
        if category == UNCATEGORISED:
            return frozenset()
        if category not in self._approved:
            self._approved[category] = frozenset(self._approved_for(category, at))
        return self._approved[category]


def record_compliance_page(settings: Settings, request: CompliancePageInput) -> CompliancePageResult:
    """Audit one page of the fleet for ``request.day`` (judged at its end, or at ``generated_at`` for a run
    of the day so far) and queue each machine's ``PatchCompliance_CL`` row in the log outbox."""
    service = table_service(settings)
    as_of = min(end_of_day(request.day), request.generated_at)
    page = audit_reader(settings, service).page(request.day, as_of, None, COMPLIANCE_PAGE_SIZE, request.token)
    # The page's deadlines coming up, kept for the run's end to notify (shared.governance.deadline_warnings).
    DeadlineWarningStore(service).record_page(request.day, page_id(request.token),
                                              warnings_of(page.audits, as_of))
    rows = [compliance_row(audit, request.generated_at) for audit in page.audits]
    queued = log_outbox(settings).put(PATCH_COMPLIANCE, rows, request.generated_at)
    return CompliancePageResult(
        machines=len(rows), queued=queued,
        overdue_machines=sum(1 for a in page.audits if a.count(Finding.OVERDUE)),
        unauthorized_machines=sum(1 for a in page.audits if a.count(Finding.INSTALLED_UNAUTHORIZED)),
        next_token=page.next_token,
    )  # fmt: skip


# --- entities to facts --------------------------------------------------------------------------------


def placement(entity: Mapping[str, Any]) -> tuple[str, str]:
    """The machine's category and ring as discovery placed it (``AssetCategory``, ``Ring``)."""
    return str(entity.get(ASSET_CATEGORY) or UNCATEGORISED), str(entity.get(RING) or "")


def machine_facts(entity: Mapping[str, Any]) -> MachineFacts:
    category, ring = placement(entity)
    return MachineFacts(
        key=str(entity["RowKey"]), resource_id=str(entity.get("ResourceId") or ""),
        computer=str(entity.get("ComputerName") or entity.get("Name") or ""),
        os_type=OsType(str(entity.get("OsType") or OsType.WINDOWS.value)), category=category, ring=ring,
        subscription_id=str(entity.get("PartitionKey") or ""),
        environment=str(entity.get("Environment") or ""),
    )  # fmt: skip


def gap_facts(entity: Mapping[str, Any]) -> GapFacts:
    first, closed = entity.get("FirstSeenMissing"), entity.get("NoLongerNeededSince")
    return GapFacts(
        update_key=str(entity["RowKey"]), classification=str(entity.get("Classification") or ""),
        title=str(entity.get("Title") or ""), first_seen=first if isinstance(first, datetime) else None,
        closed_at=closed if isinstance(closed, datetime) and entity.get("State") != "Needed" else None,
        version=str(entity.get("PackageVersion") or ""),
    )  # fmt: skip


def history_point(entity: Mapping[str, Any]) -> HistoryPoint:
    keys = None if entity.get("CountsOnly") else frozenset(missing_keys(entity))
    return HistoryPoint(entity["AssessedAt"], keys)


def install_facts(os_type: OsType, row: Mapping[str, Any]) -> InstallFacts | None:
    """One MachineChanges row; None for a row that names no update or no time."""
    at = row.get("At") or row.get("InstalledAt")
    if not isinstance(at, datetime):
        return None
    ref = ref_of_row(os_type, row)
    if ref is None and row.get("Key"):
        try:
            ref = parse_patch_ref(os_type, str(row["Key"]))
        except PatchRefError:
            return None
    if ref is None:
        return None
    return InstallFacts(
        ref=ref, at=at, status=str(row.get("Status") or ""), run_id=str(row.get("RunId") or ""),
        deployment=str(row.get("Deployment") or ""), authorized_by=str(row.get("AuthorizedBy") or ""),
        title=str(row.get("Title") or ""), classification=str(row.get("Classification") or ""),
    )  # fmt: skip


__all__ = ["AuditPage", "AuditReader", "audit_reader", "record_compliance_page"]
