"""The patch inventory in Azurite: facts, guarded state changes, append-only history, the past, the log."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableServiceClient

from shared.azure.log_outbox import _rows, log_outbox
from shared.governance.patch_refs import PatchRef
from shared.governance.patches import (
    EVIDENCE_ACTOR,
    Action,
    EvidenceCounts,
    InvalidTransition,
    PatchFacts,
    PatchState,
    SeparationOfDuties,
    parse_facts_edit,
    rule_actor,
)
from shared.governance.patches_table import (
    PATCH_INVENTORY_TABLE,
    STATE_PREFIX,
    EditConflict,
    PatchInventory,
    patch_inventory,
)
from shared.log_tables import PATCH_INVENTORY
from shared.model.machines import OsType
from shared.principal import Role
from shared.settings import Settings, load_settings

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
OPERATOR, APPROVER = {Role.OPERATOR}, {Role.APPROVER}


@pytest.fixture
def settings(app_settings) -> Settings:
    return load_settings()


@pytest.fixture
def inventory(settings) -> PatchInventory:
    return patch_inventory(settings)


def linux_ref() -> PatchRef:
    return PatchRef(OsType.LINUX, package=f"libgov{uuid.uuid4().hex[:8]}", version="1.2-3ubuntu1")


def category() -> str:
    return f"web-{uuid.uuid4().hex[:8]}"


def passed(inventory: PatchInventory, ref: PatchRef, cat: str, at: datetime = T0) -> None:
    inventory.record_evidence_result(ref, cat, PatchState.IN_TEST, None, at)
    inventory.record_evidence_result(ref, cat, "passed", None, at + timedelta(hours=1),
                                     EvidenceCounts(installed=2, baked_since=at))


def queued_log_rows(settings: Settings, ref: PatchRef) -> list[dict]:
    """The PatchInventory_CL rows waiting in the log outbox for ``ref`` (no sender runs in these tests)."""
    outbox = log_outbox(settings)
    return [row for envelope in outbox._envelopes(PATCH_INVENTORY) for row in _rows(envelope)
            if row["PatchKey"] == ref.key]


def test_first_seen_creates_the_record_once(inventory):
    ref = linux_ref()
    facts = PatchFacts(ref, title="libgov fix", classification="Security", product="Ubuntu",
                       first_seen=T0, machines_needing_at_first_seen=7)
    assert inventory.record_first_seen(facts) is True
    later = replace(facts, first_seen=T0 + timedelta(hours=1), machines_needing_at_first_seen=9)
    assert inventory.record_first_seen(later) is False  # a later sight of the version changes nothing
    assert inventory.record_first_seen(facts) is True  # a retry of the first sight is that sight

    stored = inventory.facts(ref)
    assert (stored.title, stored.classification, stored.first_seen) == ("libgov fix", "Security", T0)
    assert stored.machines_needing_at_first_seen == 7
    [entry] = inventory.history(ref)
    assert (entry.action, entry.by, entry.category) == (Action.FIRST_SEEN, "system:assessment", "")
    assert inventory.state(ref, "anything").state is PatchState.NEW


def test_every_move_is_history_with_who_when_from_to_why(inventory, settings):
    ref, cat = linux_ref(), category()
    passed(inventory, ref, cat)
    authorized = inventory.change(ref, cat, Action.AUTHORIZE, "olga", T0 + timedelta(hours=2),
                                  "fixes CVE-2026-1", roles=OPERATOR, request_id="apr-1")
    assert (authorized.state, authorized.requested_by, authorized.request_id) == (
        PatchState.AUTHORIZED, "olga", "apr-1")

    with pytest.raises(SeparationOfDuties, match=r"(?i)olga requested"):
        inventory.change(ref, cat, Action.APPROVE, "OLGA", T0 + timedelta(hours=3), "looks fine",
                         roles=APPROVER | OPERATOR)
    approved = inventory.change(ref, cat, Action.APPROVE, "anna", T0 + timedelta(hours=3),
                                "tested on 2 web servers", roles=APPROVER)
    assert (approved.state, approved.by, approved.justification) == (
        PatchState.APPROVED, "anna", "tested on 2 web servers")

    history = inventory.history(ref, cat)
    assert [(h.by, h.from_state, h.to_state, h.justification, h.request_id) for h in history] == [
        ("anna", PatchState.AUTHORIZED, PatchState.APPROVED, "tested on 2 web servers", "apr-1"),
        ("olga", PatchState.PASSED, PatchState.AUTHORIZED, "fixes CVE-2026-1", "apr-1"),
        (EVIDENCE_ACTOR, PatchState.IN_TEST, PatchState.PASSED, None, None),
        (EVIDENCE_ACTOR, PatchState.NEW, PatchState.IN_TEST, None, None),
    ]
    assert history[0].at == T0 + timedelta(hours=3)
    rows = queued_log_rows(settings, ref)
    columns = ("Action", "FromState", "ToState", "ChangedBy", "AssetCategory")
    assert sorted(tuple(r[c] for c in columns) for r in rows) == sorted([
        ("approve", "authorized", "approved", "anna", cat),
        ("authorize", "passed", "authorized", "olga", cat),
        ("pass", "in test", "passed", EVIDENCE_ACTOR, cat),
        ("test", "new", "in test", EVIDENCE_ACTOR, cat)])


def test_approved_at_a_past_time_is_read_from_history(inventory):
    ref, other, cat = linux_ref(), linux_ref(), category()
    for r in (ref, other):
        passed(inventory, r, cat)
        inventory.change(r, cat, Action.AUTHORIZE, "olga", T0 + timedelta(hours=2), roles=OPERATOR,
                         request_id="apr-2")
    inventory.change(ref, cat, Action.APPROVE, "anna", T0 + timedelta(days=1), "ok", roles=APPROVER)
    inventory.change(other, cat, Action.APPROVE, "anna", T0 + timedelta(days=2), "ok", roles=APPROVER)
    inventory.change(ref, cat, Action.REVOKE, "anna", T0 + timedelta(days=3), "regression found",
                     roles=APPROVER)

    assert inventory.approved(cat, T0 + timedelta(hours=12)) == set()
    assert inventory.approved(cat, T0 + timedelta(days=1, hours=1)) == {ref}
    assert inventory.approved(cat, T0 + timedelta(days=2, hours=1)) == {ref, other}
    assert inventory.approved(cat, T0 + timedelta(days=4)) == {other}
    assert inventory.approved(cat) == {other}
    assert inventory.approved(category(), T0 + timedelta(days=4)) == set()


def test_evidence_records_results_and_leaves_decisions_alone(inventory):
    ref, cat = linux_ref(), category()
    failed = inventory.record_evidence_result(ref, cat, "failed", "exit code 100 on vm-test-1", T0)
    assert (failed.state, failed.justification) == (PatchState.FAILED, "exit code 100 on vm-test-1")
    again = inventory.record_evidence_result(ref, cat, "failed", "exit code 100 on vm-test-1", T0)
    assert len(inventory.history(ref, cat)) == 1 and again.state is PatchState.FAILED  # same result: no row
    inventory.record_evidence_result(ref, cat, "passed", None, T0 + timedelta(days=1))
    inventory.change(ref, cat, Action.AUTO_APPROVE, rule_actor(cat), T0 + timedelta(days=2))
    assert inventory.state(ref, cat).by == f"rule:{cat}"
    kept = inventory.record_evidence_result(ref, cat, "failed", "late failure", T0 + timedelta(days=3))
    assert kept.state is PatchState.APPROVED  # a decided update keeps its decision
    with pytest.raises(ValueError, match="result"):
        inventory.record_evidence_result(ref, cat, "approved", None, T0)


def test_a_change_racing_another_applies_the_rules_again(inventory, settings):
    ref, cat = linux_ref(), category()
    passed(inventory, ref, cat)
    inventory.change(ref, cat, Action.AUTHORIZE, "olga", T0 + timedelta(hours=2), roles=OPERATOR,
                     request_id="apr-3")
    service = TableServiceClient.from_connection_string(settings.storage_connection_string or "")
    rival = PatchInventory(service, log_outbox(settings))

    def decided_meanwhile(status):
        if status.state is PatchState.AUTHORIZED:  # another approver rejects between read and write
            rival.change(ref, cat, Action.REJECT, "ben", T0 + timedelta(hours=3), "no", roles=APPROVER)

    with pytest.raises(InvalidTransition, match="'rejected'"):
        inventory.change(ref, cat, Action.APPROVE, "anna", T0 + timedelta(hours=3), "yes", roles=APPROVER,
                         expect=decided_meanwhile)
    assert inventory.state(ref, cat).state is PatchState.REJECTED
    assert [h.to_state for h in inventory.history(ref, cat)][:1] == [PatchState.REJECTED]


def test_facts_edits_are_guarded_and_recorded(inventory):
    ref = linux_ref()
    inventory.record_first_seen(PatchFacts(ref, title="t", classification="Other", first_seen=T0))
    before = inventory.facts(ref)
    edit = parse_facts_edit({"impact": {"rebootRequired": True, "expectedDowntimeMinutes": 5,
                                        "dependencies": ["libc6=2.35-0ubuntu3.8"], "order": 2},
                             "references": ["INC0012345", "https://ubuntu.com/security/notices/USN-1"]})
    edited = inventory.edit_facts(ref, edit, "olga", T0 + timedelta(hours=1), before.etag)
    assert edited.impact.reboot_required is True and edited.references[0] == "INC0012345"
    assert edited.title == "t" and edited.modified_by == "olga"
    with pytest.raises(EditConflict):
        inventory.edit_facts(ref, parse_facts_edit({"justification": "x"}), "olga", T0, before.etag)
    assert [h.action for h in inventory.history(ref)] == [Action.EDIT, Action.FIRST_SEEN]


def test_listing_filters_by_os_category_state_and_classification(inventory):
    ref, cat = linux_ref(), category()
    inventory.record_first_seen(PatchFacts(ref, title="t", classification="Security", first_seen=T0))
    passed(inventory, ref, cat)
    found = [v.facts.ref for v in inventory.list(os_type="Linux", category=cat, state=PatchState.PASSED)]
    assert found == [ref]
    assert ref in [v.facts.ref for v in inventory.list(category=category(), state=PatchState.NEW)]
    assert ref not in [v.facts.ref for v in inventory.list(os_type="Windows")]
    assert ref in [v.facts.ref for v in inventory.list(classification="security")]
    assert ref not in [v.facts.ref for v in inventory.list(classification="Other")]
    service_rows = inventory._table.query_entities("PartitionKey eq @p", parameters={"p": ref.table_key})
    assert {e["RowKey"][:2] for e in service_rows} == {"~p", STATE_PREFIX, "h|"}
    assert PATCH_INVENTORY_TABLE == "PatchInventory"
