"""Governed deployments: what a deployment of a release or of ``approvedOnly`` installs on a machine, the
approval rule checked at creation and at each run's start, and what a batch's end records as test
evidence and change history.

The rules are governance's (shared.governance: releases, enforcement, evidence); this module reads what
they need (the release, the machines' placements, the categories, the approved updates) and writes what
they answer (PatchEvidence, MachineChanges, each update's state through the patch inventory).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.azure.tables import table_service
from shared.deployments.definition import DeploymentDefinition
from shared.deployments.messages import DEPLOYMENT_BATCH_SIZE
from shared.deployments.results import MachineResultStatus
from shared.fleet.machines_table import MachineInventory
from shared.fleet.placement import ASSET_CATEGORY, RING, stored_placement
from shared.governance.categories import UNCATEGORISED, AssetCategory
from shared.governance.categories_table import category_store
from shared.governance.enforcement import EnforcementProblem, approved_install_lists, enforcement_problems
from shared.governance.evidence import (
    INSTALLED_STATUS,
    TESTING,
    EvidenceState,
    authorized_by,
    records_of_rows,
    verdict,
)
from shared.governance.evidence_table import EvidenceStore, change_row, change_store, evidence_store
from shared.governance.patch_refs import PatchRef, parse_patch_ref, ref_of_row
from shared.governance.patches import EvidenceCounts, PatchState
from shared.governance.patches_table import PatchInventory, patch_inventory
from shared.governance.releases import (
    Held,
    InstallLists,
    Release,
    ReleaseError,
    ReleaseRequest,
    frozen_ring_items,
    held_packages,
    install_lists,
    sorted_items,
)
from shared.governance.releases_table import ReleaseNotFound, release_store
from shared.model.assessment_outcome import AssessmentOutcome
from shared.model.machines import Machine, OsType, machine_key
from shared.settings import Settings

log = logging.getLogger(__name__)

# The run machine row's columns: what the pre-scan decided the install names, and what it holds back.
GOVERNED_COLUMN = "GovernedItems"
HELD_COLUMN = "Held"


# --- placements and categories --------------------------------------------------------------------


# Up to a batch's machines (a batch's end reads its own), a read per machine; past it (a run's targets at
# its start), one paged read of the Machines table's three columns (1,000 entities a page) is cheaper.
MAX_SINGLE_READS = DEPLOYMENT_BATCH_SIZE


def placements(settings: Settings, resource_ids: Iterable[str]) -> dict[str, tuple[str, str | None]]:
    """Each machine's (category, ring) as its Machines entity holds it, by machine key; a machine never
    placed is :data:`UNCATEGORISED`."""
    inventory = MachineInventory(table_service(settings))
    ids = list(dict.fromkeys(resource_ids))
    entities: Iterable[Mapping[str, Any] | None]
    if len(ids) > MAX_SINGLE_READS:
        wanted = {machine_key(i) for i in ids}
        entities = (e for e in inventory.columns(["RowKey", "ResourceId", ASSET_CATEGORY, RING])
                    if e["RowKey"] in wanted)
    else:
        entities = (inventory.get(resource_id) for resource_id in ids)
    found: dict[str, tuple[str, str | None]] = {machine_key(i): (UNCATEGORISED, None) for i in ids}
    for entity in entities:
        if entity is not None and entity.get("ResourceId"):
            found[machine_key(str(entity["ResourceId"]))] = stored_placement(entity) or (UNCATEGORISED, None)
    return found


def category_members(settings: Settings, wanted: Iterable[tuple[str, str | None]],
                     os_type: OsType) -> list[str]:
    """The resource ids of the ``os_type`` machines placed in each (category, ring); ring None: the whole
    category. One paged read of three columns of the Machines table."""
    wanted = [(c.lower(), r.lower() if r else None) for c, r in wanted]
    inventory = MachineInventory(table_service(settings))
    members = []
    for entity in inventory.columns(["ResourceId", "OsType", ASSET_CATEGORY, RING]):
        category = str(entity.get(ASSET_CATEGORY) or "").lower()
        ring = str(entity.get(RING) or "").lower()
        if entity.get("OsType") == os_type.value and any(
            category == c and (r is None or ring == r) for c, r in wanted
        ):
            members.append(str(entity["ResourceId"]))
    return sorted(members, key=str.lower)


def categories_by_name(settings: Settings) -> dict[str, AssetCategory]:
    return {c.name.lower(): c for c in category_store(settings).categories()}


# --- the approval rule -----------------------------------------------------------------------------


def on_test_ring(category: AssetCategory, ring: str | None) -> bool:
    """Whether ``ring`` is the category's test ring: its first, when it has another after it (a category
    of one ring has no separate test ring: its only ring is production)."""
    return len(category.rings) > 1 and ring is not None and ring.lower() == category.test_ring.lower()


def approval_required(category: AssetCategory, ring: str | None) -> bool:
    """Whether installs on ``ring`` of ``category`` (None: every ring) need approved updates: where the
    category requires approval, on every ring but its test ring, where updates are tested to be approved."""
    return category.requires_approval and not on_test_ring(category, ring)


def enforcement(settings: Settings, definition: DeploymentDefinition,
                resource_ids: Iterable[str]) -> list[EnforcementProblem]:
    """Why ``definition`` may not run on its targets (``resource_ids``, and its category targets), empty
    when it may (shared.governance.enforcement). A release it names must exist and hold updates of its OS."""
    problems: list[EnforcementProblem] = []
    release = None
    if definition.release:
        try:
            release = release_store(settings).get(definition.release)
        except ReleaseNotFound as error:
            return [EnforcementProblem("release", str(error))]
        if not release.items_for(definition.operating_system):
            problems.append(EnforcementProblem("release", (
                f"release {release.name!r} holds no {definition.operating_system.value} update: a "
                "deployment of it would have nothing to install")))
    known = categories_by_name(settings)
    if not known:
        return problems  # no category: nothing requires approval
    placed = [*((t.category, t.ring) for t in definition.targets.categories or ()),
              *placements(settings, resource_ids).values()]
    required = sorted({known[c.lower()].name for c, ring in placed
                       if c.lower() in known and approval_required(known[c.lower()], ring)})
    inventory = patch_inventory(settings)
    problems += enforcement_problems(required, definition.release, release, bool(definition.approved_only),
                                     lambda category: inventory.approved(category))
    return problems


# --- what a machine's install names ------------------------------------------------------------------


@dataclass(frozen=True)
class GovernedInstall:
    lists: InstallLists
    held: tuple[Held, ...]
    items: int  # the updates of the machine's OS the lists name

    def columns(self) -> dict[str, str]:
        return {GOVERNED_COLUMN: json.dumps({"kbNumbersToInclude": list(self.lists.kb_numbers_to_include),
                                             "packagesToInclude": list(self.lists.packages_to_include)}),
                HELD_COLUMN: json.dumps([str(h) for h in self.held])}


def governed_install(settings: Settings, definition: DeploymentDefinition, machine: Machine,
                     outcome: AssessmentOutcome) -> GovernedInstall | None:
    """At the pre-scan: the updates the machine's install names (a release's, or its category's approved
    ones), and the packages the scan offers only at an untested version; None for a deployment by
    classification."""
    os_type = machine.os_type
    refs: tuple[PatchRef, ...]
    if definition.release:
        release: Release = release_store(settings).get(definition.release)
        refs, lists = release.items_for(os_type), install_lists(release, os_type)
    elif definition.approved_only:
        category, _ = placements(settings, [machine.resource_id])[machine.key]
        approved = patch_inventory(settings).approved(category)
        refs = tuple(ref for ref in approved if ref.os_type is os_type)
        lists = approved_install_lists(refs, os_type)
    else:
        return None
    linux = os_type is OsType.LINUX
    offered = {p.name: p.version for p in outcome.patches or () if p.version} if linux else {}
    return GovernedInstall(lists, held_packages(refs, offered), len(refs))


def stored_lists(row: Mapping[str, Any]) -> InstallLists | None:
    """The lists the pre-scan kept on the machine's run row (:data:`GOVERNED_COLUMN`)."""
    text = row.get(GOVERNED_COLUMN)
    if not text:
        return None
    body = json.loads(str(text))
    return InstallLists(tuple(body["kbNumbersToInclude"]), tuple(body["packagesToInclude"]))


def held_of_row(row: Mapping[str, Any]) -> list[str]:
    return list(json.loads(str(row.get(HELD_COLUMN) or "[]")))


# --- a batch's end: authorization, evidence, change history ---------------------------------------


def record_batch(settings: Settings, progress: list[dict[str, Any]],
                 machine_rows: Sequence[Mapping[str, Any]], at: datetime) -> None:
    """For the batch's ``UpdateRunProgress_CL`` rows (wire form, changed in place): the ``Authorized`` and
    ``AuthorizedBy`` columns; each machine's MachineChanges; and, for machines on their category's first
    (test) ring, PatchEvidence and the state the evidence rule answers for each update (through the patch
    inventory)."""
    if not progress:
        return
    by_machine: dict[str, list[dict[str, Any]]] = {}
    for row in progress:
        by_machine.setdefault(str(row.get("SourceComputerId") or ""), []).append(row)
    resource_ids = {str(rows[0]["ResourceId"]) for rows in by_machine.values() if rows[0].get("ResourceId")}
    known = categories_by_name(settings)
    # With no category, every machine is uncategorised: no placement to read, nothing requires approval.
    placed = placements(settings, sorted(resource_ids)) if known else {}
    inventory = patch_inventory(settings) if known else None
    approvals: dict[str, Callable[[PatchRef], str | None]] = {}
    changes: list[dict[str, Any]] = []
    test_rows: dict[str, list[dict[str, Any]]] = {}
    reasons = {machine_key(str(r["ResourceId"])): str(r.get("ErrorMessage") or r.get("Reason") or "")
               for r in machine_rows if r.get("ResourceId")}
    # A machine restored from its snapshots after a failed health check: its installs are failures.
    rolled_back = {
        machine_key(str(r["ResourceId"])): f"rolled back: {r.get('Reason') or 'a health check failed'}"
        for r in machine_rows
        if r.get("ResourceId") and r.get("State") == MachineResultStatus.ROLLED_BACK.value
    }
    for machine, rows in by_machine.items():
        category_name, ring = placed.get(machine, (UNCATEGORISED, None))
        category = known.get(category_name.lower())
        requires = category is not None and approval_required(category, ring)
        testing = category is not None and category.requires_approval and on_test_ring(category, ring)
        if requires and inventory is not None and category_name not in approvals:
            approvals[category_name] = _approval_of(inventory, category_name)
        for row in rows:
            ref = ref_of_row(str(row.get("OSType")), row)
            approval = approvals[category_name](ref) if requires and ref is not None else None
            authorized = TESTING if testing else authorized_by(requires, approval)
            row["AuthorizedBy"] = authorized
            row["Authorized"] = authorized != "unauthorized"
            if ref is not None:
                when = _moment(row.get("TimeGenerated"), at)
                changes.append(change_row(machine, ref, row, when, authorized, category_name, ring or ""))
        if category is not None and ring is not None and ring.lower() == category.test_ring.lower():
            # The first ring's evidence (a category of one ring too: its evidence is its production's).
            test_rows.setdefault(category.name, []).extend(rows)
    change_store(settings).record(changes)
    for category_name, rows in test_rows.items():
        assert inventory is not None  # test rows need a category
        _record_evidence(settings, inventory, known[category_name.lower()], rows, reasons, at, rolled_back)


def _approval_of(inventory: PatchInventory, category: str) -> Callable[[PatchRef], str | None]:
    """What approved an update for ``category`` now: the request id (or the rule) of its approved state."""
    approved = inventory.approved(category)

    def approval(ref: PatchRef) -> str | None:
        if ref not in approved:
            return None
        status = inventory.state(ref, category)
        return status.request_id or status.by or "approved"

    return approval


def _record_evidence(settings: Settings, inventory: PatchInventory, category: AssetCategory,
                     rows: Sequence[Mapping[str, Any]], reasons: Mapping[str, str], at: datetime,
                     rolled_back: Mapping[str, str] | None = None) -> None:
    run_id = str(rows[0].get("UpdateRunId") or "")
    os_types = {str(r.get("SourceComputerId")): str(r.get("OSType")) for r in rows}
    records = records_of_rows(os_types, rows, run_id, at, reasons, rolled_back)
    store = evidence_store(settings)
    store.record(category.name, records)
    for ref in sorted({r.ref for r in records}):
        evaluate(store, inventory, category, ref, at)


def evaluate(store: EvidenceStore, inventory: PatchInventory, category: AssetCategory, ref: PatchRef,
             now: datetime) -> EvidenceState:
    """Apply the evidence rule to one update in one category and record its state when it changed (the
    inventory leaves out a result for an update already decided: approved, rejected)."""
    rule = category.test_evidence
    found = verdict(store.records(category.name, ref), rule.min_machines, rule.bake_hours, now)
    current = inventory.state(ref, category.name).state
    settled = (PatchState.PASSED, PatchState.FAILED)
    regress = found.state is EvidenceState.IN_TEST and current in settled
    if current.value != found.state.value and not regress:
        counts = EvidenceCounts(found.installed, found.failed, found.baked_since)
        inventory.record_evidence_result(ref, category.name, found.state.value, found.reason, now,
                                         evidence=counts)
    return found.state


def evaluate_baking(settings: Settings, now: datetime) -> int:
    """The timer's pass: each update ``in test`` in a category (one query per category) is judged again, so
    one whose bake time ended with no new install moves to passed. Answers how many moved."""
    store, inventory, moved = evidence_store(settings), patch_inventory(settings), 0
    for category in category_store(settings).categories():
        for status in inventory.statuses_in(category.name, [PatchState.IN_TEST]):
            moved += evaluate(store, inventory, category, status.ref, now) is EvidenceState.PASSED
    return moved


def _moment(value: Any, default: datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return default


# --- building a release --------------------------------------------------------------------------------

# Updates that passed testing for a category, whatever was decided since (a release is built before or
# after its approval is requested).
PASSED_TESTING = (PatchState.PASSED, PatchState.AUTHORIZED, PatchState.APPROVED)


def build_release(settings: Settings, request: ReleaseRequest, by: str, now: datetime) -> Release:
    """The release ``request`` asks for, not yet stored: its explicit items, every update that passed
    testing for the category (``from: "passed"``), or the versions the ring's machines had installed at
    ``at`` (``from: "ring"``, from their MachineChanges). Raises ReleaseError naming the field at fault,
    CategoryNotFound for an unknown category."""
    category = category_store(settings).get(request.category).category
    frozen_at: datetime | None = None
    ring_name: str | None = None
    if request.source == "items":
        items = sorted_items(request.refs())
    elif request.source == "passed":
        statuses = patch_inventory(settings).statuses_in(category.name, PASSED_TESTING)
        items = sorted_items(status.ref for status in statuses)
        if not items:
            raise ReleaseError("from", f"no update has passed testing for category {category.name!r} yet")
    else:
        ring = category.ring(str(request.ring))
        if ring is None:
            raise ReleaseError("ring", f"category {category.name!r} has no ring {request.ring!r} (rings: "
                               f"{', '.join(r.name for r in category.rings)})")
        frozen_at, ring_name = request.at or now, ring.name
        members = [m for os_type in OsType for m in category_members(settings, [(category.name, ring.name)],
                                                                      os_type)]
        changes = change_store(settings)
        installs = [
            (ref, row["At"]) for resource_id in members for row in changes.history(machine_key(resource_id))
            if row.get("Status") == INSTALLED_STATUS and (ref := _change_ref(row)) is not None
        ]  # fmt: skip
        items = frozen_ring_items(installs, frozen_at)
        if not items:
            raise ReleaseError("ring", f"the machines of ring {ring.name!r} had installed no update through "
                               f"a deployment by {frozen_at.isoformat()}")
    return Release(name=request.name, category=category.name, description=request.description, items=items,
                   created_by=by, created_at=now, source=request.source, frozen_at=frozen_at, ring=ring_name)


def _change_ref(row: Mapping[str, Any]) -> PatchRef | None:
    try:
        return parse_patch_ref(str(row["OsType"]), str(row["Key"]))
    except (KeyError, ValueError):
        return None


def release_users(deployments: Iterable[DeploymentDefinition], name: str) -> list[str]:
    """The deployments that name release ``name`` (which keep it from being deleted)."""
    return [d.name for d in deployments if d.release and d.release.lower() == name.lower()]
