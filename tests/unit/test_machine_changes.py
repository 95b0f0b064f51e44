"""A machine's change history as the API shows it: the approval behind an install, read from the update's
history, and the test evidence behind it with the rule's verdict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.governance.categories import validate_category
from shared.governance.evidence import EvidenceRecord, Outcome
from shared.governance.machine_changes import (
    MAX_LISTED_MACHINES,
    MAX_PAGE_SIZE,
    ChangesError,
    approval_view,
    change_view,
    evidence_view,
    parse_changes_query,
)
from shared.governance.patch_refs import PatchRef
from shared.governance.patches import Action, HistoryEntry, PatchState
from shared.model.machines import OsType

AT = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
REF = PatchRef(OsType.LINUX, package="openssl", version="3.0.2-0ubuntu1.15")
WEB = validate_category({"name": "web", "criticality": 2, "membership": {"all": True},
                         "rings": [{"name": "test", "membership": {"tags": {"ring": "test"}}},
                                   {"name": "production"}],
                         "testEvidence": {"minMachines": 2, "bakeHours": 24}})


def entry(action: Action, by: str, hours: float, to: PatchState, request: str | None = "apr-1",
          why: str | None = None) -> HistoryEntry:
    return HistoryEntry(REF, "web", AT + timedelta(hours=hours), by, action, None, to, why, request)


# Newest first, as PatchInventory.history answers.
HISTORY = [
    entry(Action.APPROVE, "bob", 30, PatchState.APPROVED, why="approved again"),
    entry(Action.REVOKE, "bob", 20, PatchState.AUTHORIZED, why="regression"),
    entry(Action.APPROVE, "anna", 10, PatchState.APPROVED, why="CAB 12"),
    entry(Action.AUTHORIZE, "olga", 5, PatchState.AUTHORIZED, why="passed on the test ring"),
    entry(Action.PASS, "system:evidence", 1, PatchState.PASSED, request=None),
]


def test_the_approval_in_force_when_installed_and_the_revocation_after_it():
    view = approval_view("apr-1", HISTORY, AT + timedelta(hours=15))
    assert (view["kind"], view["requestId"], view["link"]) == ("request", "apr-1", "/api/approvals/apr-1")
    requested = view["requested"]
    assert (requested["by"], requested["justification"]) == ("olga", "passed on the test ring")
    assert (view["approved"]["by"], view["approved"]["justification"]) == ("anna", "CAB 12")
    assert (view["revoked"]["by"], view["revoked"]["justification"]) == ("bob", "regression")
    later = approval_view("apr-1", HISTORY, AT + timedelta(hours=31))
    assert later["approved"]["justification"] == "approved again" and later["revoked"] is None
    # An install stamped before any approval (clocks that disagree): the latest approval is shown.
    assert approval_view("apr-1", HISTORY, AT)["approved"]["justification"] == "approved again"


def test_a_rule_and_the_values_that_stand_alone():
    rule = [entry(Action.AUTO_APPROVE, "rule:web", 2, PatchState.APPROVED, request=None, why="rule")]
    view = approval_view("rule:web", rule, AT + timedelta(hours=3))
    assert (view["kind"], view["rule"], view["approved"]["by"]) == ("rule", "rule:web", "rule:web")
    for value in ("test ring", "not required", "unauthorized"):
        assert approval_view(value, HISTORY, AT) == {"kind": value}
    assert approval_view("", [], AT) == {"kind": "unauthorized"}
    missing = approval_view("apr-gone", HISTORY, AT)
    assert (missing["kind"], missing["approved"], missing["requested"]) == ("request", None, None)


def record(machine: str, outcome: Outcome, hours: float) -> EvidenceRecord:
    return EvidenceRecord(REF, machine, outcome, AT + timedelta(hours=hours), "run-1", "exit 100"
                          if outcome is Outcome.FAILED else "", f"{machine}.contoso.com")


def test_evidence_counts_names_and_the_rules_verdict():
    two = [record("t1", Outcome.INSTALLED, 0), record("t2", Outcome.INSTALLED, 1)]
    passed = evidence_view(WEB, "web", two, AT + timedelta(hours=26))
    assert (passed["testRing"], passed["installed"], passed["failed"]) == ("test", 2, 0)
    assert passed["verdict"] == "passed"
    assert passed["bakedSince"] == (AT + timedelta(hours=1)).isoformat()
    baking = evidence_view(WEB, "web", two, AT + timedelta(hours=2))
    assert baking["verdict"] == "in test" and "baking until" in baking["reason"]
    failed = evidence_view(WEB, "web", [record("t1", Outcome.FAILED, 0)], AT)
    assert failed["verdict"] == "failed" and failed["failedOn"][0]["reason"] == "exit 100"
    none = evidence_view(WEB, "web", [], AT)
    assert none["verdict"] is None and "test" in none["reason"]
    gone = evidence_view(None, "old", [record("t1", Outcome.INSTALLED, 0)], AT)
    assert gone["verdict"] is None and gone["installed"] == 1 and "no longer exists" in gone["reason"]
    many = [record(f"t{n}", Outcome.INSTALLED, n) for n in range(MAX_LISTED_MACHINES + 5)]
    listed = evidence_view(WEB, "web", many, AT + timedelta(days=3))
    assert listed["installed"] == MAX_LISTED_MACHINES + 5
    assert len(listed["installedOn"]) == MAX_LISTED_MACHINES


def test_a_change_row_as_the_api_shows_it():
    row = {"OsType": "Linux", "Key": REF.key, "PackageName": "openssl", "PackageVersion": REF.version,
           "KBID": "", "Status": "succeeded", "At": AT, "RunId": "run-9", "Deployment": "web-prod",
           "AuthorizedBy": "unauthorized", "Category": "", "Ring": ""}
    view = change_view(row)
    assert (view["at"], view["kbId"], view["version"], view["run"]) == (
        AT.isoformat(), None, REF.version, "/api/deployment-runs/run-9")
    assert (view["category"], view["ring"], view["authorized"]) == ("uncategorised", None, False)


@pytest.mark.parametrize("size", ["0", str(MAX_PAGE_SIZE + 1), "ten", "-1", ""])
def test_the_page_size_is_bounded(size):
    with pytest.raises(ChangesError) as refused:
        parse_changes_query({"pageSize": size})
    assert refused.value.field == "pageSize"
    assert parse_changes_query({}).page_size == 50
