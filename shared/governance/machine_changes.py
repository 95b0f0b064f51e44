"""A machine's change history as ``GET /api/machines/{id}/changes`` shows it: each update a deployment
installed or tried on the machine, newest first, with the test evidence and the approval behind it.

The rows are the machine's ``MachineChanges`` partition (shared.governance.evidence_table), one page at a
time. Each row is joined with:

- **the test evidence**: the category's ``PatchEvidence`` for that update (each test-ring machine's latest
  result) and the verdict the evidence rule (shared.governance.evidence.verdict) gives it now, with the
  category's ``testEvidence`` rule;
- **the approval**: what ``AuthorizedBy`` names, read from the update's history in ``PatchInventory``: for
  an approval request id, who requested it and why, and the approval in force when the update was
  installed (who, when, why), and a later revocation if there was one; for ``rule:<category>``, the
  rule's approval; ``test ring``, ``not required`` and ``unauthorized`` stand alone.

A page reads each (update, category) pair it holds once: one PatchEvidence partition and one history
query each, so a page of :data:`MAX_PAGE_SIZE` rows costs at most twice that many point-partition reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.governance.categories import UNCATEGORISED, AssetCategory
from shared.governance.categories_table import category_store
from shared.governance.evidence import (
    NOT_REQUIRED,
    TESTING,
    UNAUTHORIZED,
    EvidenceRecord,
    Outcome,
    verdict,
)
from shared.governance.evidence_table import change_store, evidence_store
from shared.governance.patch_refs import PatchRef, PatchRefError, parse_patch_ref
from shared.governance.patches import RULE_ACTOR_PREFIX, Action, HistoryEntry, PatchState
from shared.governance.patches_table import patch_inventory
from shared.settings import Settings

# A page is read in one Table query; 50 rows by default, at most 200, since each distinct update on the
# page costs two more partition reads (its evidence and its history).
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# Test-ring machines named per update (the counts are complete; a test ring of hundreds is listed by count).
MAX_LISTED_MACHINES = 20


class ChangesError(ValueError):
    """A bad query parameter: :attr:`field` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class ChangesQuery:
    page_size: int = DEFAULT_PAGE_SIZE
    next_token: str | None = None


def parse_changes_query(params: Mapping[str, str]) -> ChangesQuery:
    raw = params.get("pageSize", str(DEFAULT_PAGE_SIZE))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise ChangesError("pageSize", f"must be a whole number from 1 to {MAX_PAGE_SIZE}")
    return ChangesQuery(int(raw), params.get("nextToken") or None)


@dataclass(frozen=True)
class ChangesPage:
    changes: list[dict[str, Any]]
    next_token: str | None


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else (str(value) if value else None)


def evidence_view(category: AssetCategory | None, category_name: str, records: list[EvidenceRecord],
                  now: datetime) -> dict[str, Any]:
    """The category's test evidence for one update: counts, the machines (at most MAX_LISTED_MACHINES of
    each outcome) and the verdict of the evidence rule now (None without evidence or without the
    category, whose rule it needs)."""
    installed = sorted((r for r in records if r.outcome is Outcome.INSTALLED), key=lambda r: r.at)
    failed = sorted((r for r in records if r.outcome is Outcome.FAILED), key=lambda r: r.at)
    view: dict[str, Any] = {
        "category": category_name,
        "testRing": category.test_ring if category is not None else None,
        "installed": len(installed),
        "failed": len(failed),
        "installedOn": [{"computer": r.computer or r.machine, "runId": r.run_id, "at": r.at.isoformat()}
                        for r in installed[:MAX_LISTED_MACHINES]],
        "failedOn": [{"computer": r.computer or r.machine, "runId": r.run_id, "at": r.at.isoformat(),
                      "reason": r.reason} for r in failed[:MAX_LISTED_MACHINES]],
        "verdict": None, "reason": None, "bakedSince": None,
    }  # fmt: skip
    if category is None:
        view["reason"] = f"category {category_name!r} no longer exists: its test rule is gone"
    elif not records:
        view["reason"] = f"no machine of the test ring {category.test_ring!r} installed or failed it"
    else:
        rule = category.test_evidence
        found = verdict(records, rule.min_machines, rule.bake_hours, now)
        view |= {"verdict": found.state.value, "reason": found.reason,
                 "bakedSince": found.baked_since.isoformat() if found.baked_since else None}
    return view


def _entry_json(entry: HistoryEntry | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {"by": entry.by, "at": entry.at.isoformat(), "justification": entry.justification}


def approval_view(authorized_by: str, history: list[HistoryEntry], at: datetime) -> dict[str, Any]:
    """What ``AuthorizedBy`` names, from the update's history in the category (newest first): the
    approval in force at ``at`` (else the latest one, when clocks disagree), who requested it, and a
    revocation after it."""
    if authorized_by in (TESTING, NOT_REQUIRED, UNAUTHORIZED) or not authorized_by:
        return {"kind": authorized_by or UNAUTHORIZED}
    is_rule = authorized_by.lower().startswith(RULE_ACTOR_PREFIX)

    def names_it(entry: HistoryEntry) -> bool:
        return entry.by == authorized_by if is_rule else entry.request_id == authorized_by

    approvals = [e for e in history if e.to_state is PatchState.APPROVED and names_it(e)]
    approval = next((e for e in approvals if e.at <= at), approvals[0] if approvals else None)
    revoked = None
    if approval is not None:
        later = [e for e in history if e.action is Action.REVOKE and e.at > approval.at
                 and (is_rule or e.request_id == authorized_by)]
        revoked = later[-1] if later else None  # newest first: the first after the approval
    view: dict[str, Any] = {"kind": "rule" if is_rule else "request", "approved": _entry_json(approval),
                            "revoked": _entry_json(revoked)}
    if is_rule:
        return view | {"rule": authorized_by}
    request = next((e for e in history if e.action is Action.AUTHORIZE and e.request_id == authorized_by),
                   None)
    return view | {"requestId": authorized_by, "requested": _entry_json(request),
                   "link": f"/api/approvals/{authorized_by}"}


def _ref(row: Mapping[str, Any]) -> PatchRef | None:
    try:
        return parse_patch_ref(str(row.get("OsType") or ""), str(row.get("Key") or ""))
    except (PatchRefError, ValueError):
        return None


def change_view(row: Mapping[str, Any]) -> dict[str, Any]:
    authorized_by = str(row.get("AuthorizedBy") or "")
    run_id = str(row.get("RunId") or "")
    return {
        "at": _iso(row.get("At")), "osType": row.get("OsType"), "key": row.get("Key"),
        "kbId": row.get("KBID") or None, "packageName": row.get("PackageName") or None,
        "version": row.get("PackageVersion") or None, "title": row.get("Title") or None,
        "classification": row.get("Classification") or None, "status": row.get("Status") or None,
        "runId": run_id or None, "deployment": row.get("Deployment") or None,
        "run": f"/api/deployment-runs/{run_id}" if run_id else None,
        "category": row.get("Category") or UNCATEGORISED, "ring": row.get("Ring") or None,
        "authorizedBy": authorized_by or None, "authorized": authorized_by != UNAUTHORIZED,
        "reason": row.get("Reason") or None,  # why a rollback took the update off
    }  # fmt: skip


def machine_changes(settings: Settings, machine: str, query: ChangesQuery, now: datetime) -> ChangesPage:
    """One page of ``machine``'s (its key) changes, newest first, each with its evidence and approval.
    A ``nextToken`` this API did not issue is a :class:`ChangesError`."""
    try:
        page = change_store(settings).page(machine, query.page_size, query.next_token)
    except ValueError as error:
        raise ChangesError("nextToken", str(error)) from None
    categories = {c.name.lower(): c for c in category_store(settings).categories()}
    evidence, inventory = evidence_store(settings), patch_inventory(settings)
    records: dict[tuple[str, PatchRef], list[EvidenceRecord]] = {}
    histories: dict[tuple[str, PatchRef], list[HistoryEntry]] = {}
    changes = []
    for row in page.rows:
        view = change_view(row)
        ref, category_name = _ref(row), str(row.get("Category") or "")
        if ref is None or not category_name or category_name.lower() == UNCATEGORISED:
            changes.append(view | {"testEvidence": None, "approval": approval_view(
                view["authorizedBy"] or "", [], now)})
            continue
        pair = (category_name.lower(), ref)
        if pair not in records:
            records[pair] = evidence.records(category_name, ref)
        authorized_by = view["authorizedBy"] or ""
        needs_history = authorized_by not in (TESTING, NOT_REQUIRED, UNAUTHORIZED, "")
        if needs_history and pair not in histories:
            histories[pair] = inventory.history(ref, category_name)
        stamped = row.get("At")
        at = stamped if isinstance(stamped, datetime) else now
        changes.append(view | {
            "testEvidence": evidence_view(categories.get(pair[0]), category_name, records[pair], now),
            "approval": approval_view(authorized_by, histories.get(pair, []), at),
        })  # fmt: skip
    return ChangesPage(changes, page.next_token)
