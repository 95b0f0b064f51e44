"""An update's state per category: every transition, every refusal and the rule it names."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shared.assessment.updates_table import _new_versions
from shared.governance.approvals import ApprovalBodyError, parse_decision, parse_request
from shared.governance.first_seen import first_seen_notification
from shared.governance.patch_refs import PatchRef
from shared.governance.patches import (
    EVIDENCE_ACTOR,
    MAX_JUSTIFICATION_CHARS,
    Action,
    ActorNotAllowed,
    CategoryPatchStatus,
    DeferUntilRequired,
    EvidenceCounts,
    FactsError,
    InvalidTransition,
    JustificationRequired,
    PatchFacts,
    PatchState,
    SeparationOfDuties,
    auto_approval_due,
    initial_status,
    parse_facts_edit,
    rule_actor,
    transition,
    waiting_past_deferral,
)
from shared.model.machines import OsType
from shared.principal import Role

AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
REF = PatchRef(OsType.LINUX, package="openssl", version="3.0.2-0ubuntu1.12")
WEB = "web"
OPERATOR, APPROVER = frozenset({Role.OPERATOR, Role.READER}), frozenset({Role.APPROVER, Role.READER})


def at(state: PatchState, **changes) -> CategoryPatchStatus:
    return replace(initial_status(REF, WEB), state=state, since=AT - timedelta(days=1), **changes)


def authorized(by: str = "olga") -> CategoryPatchStatus:
    return at(PatchState.AUTHORIZED, requested_by=by, request_id="apr-1", by=by)


# --- every allowed move -------------------------------------------------------------------------------

ALLOWED = [
    # (from, action, actor, roles, to)
    (PatchState.NEW, Action.TEST, EVIDENCE_ACTOR, (), PatchState.IN_TEST),
    (PatchState.NEW, Action.PASS, EVIDENCE_ACTOR, (), PatchState.PASSED),
    (PatchState.NEW, Action.FAIL, EVIDENCE_ACTOR, (), PatchState.FAILED),
    (PatchState.IN_TEST, Action.PASS, EVIDENCE_ACTOR, (), PatchState.PASSED),
    (PatchState.IN_TEST, Action.FAIL, EVIDENCE_ACTOR, (), PatchState.FAILED),
    (PatchState.PASSED, Action.FAIL, EVIDENCE_ACTOR, (), PatchState.FAILED),
    (PatchState.FAILED, Action.TEST, EVIDENCE_ACTOR, (), PatchState.IN_TEST),  # tested again
    (PatchState.PASSED, Action.AUTHORIZE, "olga", OPERATOR, PatchState.AUTHORIZED),
    (PatchState.PASSED, Action.AUTO_APPROVE, rule_actor(WEB), (), PatchState.APPROVED),
    (PatchState.AUTHORIZED, Action.AUTO_APPROVE, rule_actor(WEB), (), PatchState.APPROVED),
]


@pytest.mark.parametrize(("start", "action", "by", "roles", "end"), ALLOWED,
                         ids=[f"{a[0]}-{a[1]}" for a in ALLOWED])
def test_evidence_requests_and_rules_move_as_the_design_says(start, action, by, roles, end):
    status, entry = transition(at(start), action, by, AT, "why", roles=roles, request_id="apr-9")
    assert (status.state, status.since, status.by) == (end, AT, by)
    assert (entry.from_state, entry.to_state, entry.by, entry.at) == (start, end, by, AT)
    assert entry.action is action
    assert entry.category == WEB and entry.ref == REF


@pytest.mark.parametrize(("decision", "end"), [(Action.APPROVE, PatchState.APPROVED),
                                               (Action.REJECT, PatchState.REJECTED),
                                               (Action.DEFER, PatchState.DEFERRED)])
@pytest.mark.parametrize("start", [PatchState.AUTHORIZED, PatchState.DEFERRED])
def test_an_approver_decides_an_authorized_or_deferred_update_with_a_justification(start, decision, end):
    until = AT + timedelta(days=7) if decision is Action.DEFER else None
    status, entry = transition(authorized() if start is PatchState.AUTHORIZED else
                               at(start, requested_by="olga", request_id="apr-1"),
                               decision, "anna", AT, "  tested on 2 web servers ", roles=APPROVER,
                               defer_until=until)
    assert (status.state, status.by, status.justification, status.defer_until) == (
        end, "anna", "tested on 2 web servers", until)
    assert (entry.justification, entry.request_id, entry.defer_until) == (
        "tested on 2 web servers", "apr-1", until)
    assert status.requested_by == "olga"  # who asked stays on record


def test_the_request_opens_with_the_requester_and_its_id():
    status, entry = transition(at(PatchState.PASSED), Action.AUTHORIZE, "olga", AT, "fixes CVE-2026-1",
                               roles=OPERATOR, request_id="apr-7")
    assert (status.requested_by, status.request_id, entry.request_id) == ("olga", "apr-7", "apr-7")
    assert status.pending


def test_a_failure_withdraws_a_pending_request_and_keeps_the_reason():
    status, entry = transition(authorized(), Action.FAIL, EVIDENCE_ACTOR, AT, "exit code 100 on vm-test-1")
    assert (status.state, status.justification, status.request_id) == (
        PatchState.FAILED, "exit code 100 on vm-test-1", None)
    assert entry.request_id == "apr-1"  # the history says which request it ended


def test_revoke_takes_an_approval_back_to_authorized():
    approved = at(PatchState.APPROVED, requested_by="olga", request_id="apr-1")
    status, _ = transition(approved, Action.REVOKE, "anna", AT, "regression found", roles=APPROVER)
    assert status.state is PatchState.AUTHORIZED


def test_the_requester_may_not_revoke_the_approval_of_their_own_request():
    approved = at(PatchState.APPROVED, requested_by="olga", request_id="apr-1", by="anna")
    with pytest.raises(SeparationOfDuties) as refused:
        transition(approved, Action.REVOKE, "OLGA", AT, "regression", roles=APPROVER | OPERATOR)
    assert "apr-1" in str(refused.value)
    # An approval by a category's rule had no requester: any approver may revoke it.
    by_rule = at(PatchState.APPROVED, by=rule_actor(WEB))
    status, entry = transition(by_rule, Action.REVOKE, "olga", AT, "regression", roles=APPROVER)
    assert (status.state, entry.from_state, entry.justification) == (
        PatchState.AUTHORIZED, PatchState.APPROVED, "regression")


def test_evidence_counts_ride_along():
    counts = EvidenceCounts(installed=3, failed=0, baked_since=AT - timedelta(hours=30))
    status, _ = transition(at(PatchState.IN_TEST), Action.PASS, EVIDENCE_ACTOR, AT, evidence=counts)
    assert status.evidence == counts


# --- every refusal, naming its rule -------------------------------------------------------------------

NOT_FROM = [(s, a) for a in Action for s in PatchState
            if a not in (Action.FIRST_SEEN, Action.EDIT)
            and not any(x[0] is s and x[1] is a for x in ALLOWED)
            and not (a in (Action.APPROVE, Action.REJECT, Action.DEFER) and s in (PatchState.AUTHORIZED,
                                                                                  PatchState.DEFERRED))
            and not (a is Action.REVOKE and s is PatchState.APPROVED)
            and not (a is Action.FAIL and s in (PatchState.AUTHORIZED, PatchState.DEFERRED))
            and not (a in (Action.TEST, Action.PASS, Action.FAIL) and s is PatchState.FAILED)
            and not (a in (Action.TEST, Action.PASS) and s in (PatchState.IN_TEST, PatchState.PASSED))]
_ACTOR = {Action.TEST: EVIDENCE_ACTOR, Action.PASS: EVIDENCE_ACTOR, Action.FAIL: EVIDENCE_ACTOR,
          Action.AUTO_APPROVE: rule_actor(WEB), Action.AUTHORIZE: "olga"}


@pytest.mark.parametrize(("start", "action"), NOT_FROM, ids=[f"{s}-{a}" for s, a in NOT_FROM])
def test_an_action_from_a_state_it_does_not_start_from_is_an_invalid_transition(start, action):
    with pytest.raises(InvalidTransition) as refused:
        transition(at(start), action, _ACTOR.get(action, "anna"), AT, "why", roles=OPERATOR | APPROVER,
                   defer_until=AT + timedelta(days=1))
    assert refused.value.rule == "InvalidTransition"
    assert repr(start.value) in str(refused.value) and action.value in str(refused.value)


def test_the_requester_may_not_decide_their_own_request():
    for decision in (Action.APPROVE, Action.REJECT, Action.DEFER):
        with pytest.raises(SeparationOfDuties) as refused:
            transition(authorized("olga"), decision, "Olga", AT, "fine", roles=APPROVER | OPERATOR,
                       defer_until=AT + timedelta(days=1))
        assert refused.value.rule == "SeparationOfDuties"
        assert "separation of duties" in str(refused.value) and "apr-1" in str(refused.value)


@pytest.mark.parametrize("justification", [None, "", "   "])
@pytest.mark.parametrize("decision", [Action.APPROVE, Action.REJECT, Action.DEFER, Action.REVOKE])
def test_a_decision_without_a_justification_is_refused_naming_the_field(decision, justification):
    start = at(PatchState.APPROVED) if decision is Action.REVOKE else authorized()
    with pytest.raises(JustificationRequired) as refused:
        transition(start, decision, "anna", AT, justification, roles=APPROVER,
                   defer_until=AT + timedelta(days=1))
    assert (refused.value.rule, refused.value.field) == ("JustificationRequired", "justification")


def test_a_justification_too_long_is_refused():
    with pytest.raises(JustificationRequired, match=str(MAX_JUSTIFICATION_CHARS)):
        transition(authorized(), Action.APPROVE, "anna", AT, "x" * (MAX_JUSTIFICATION_CHARS + 1),
                   roles=APPROVER)


@pytest.mark.parametrize("until", [None, AT, AT - timedelta(days=1), datetime(2026, 4, 1)])
def test_a_deferral_needs_a_future_date_with_its_zone(until):
    with pytest.raises(DeferUntilRequired) as refused:
        transition(authorized(), Action.DEFER, "anna", AT, "after the freeze", roles=APPROVER,
                   defer_until=until)
    assert (refused.value.rule, refused.value.field) == ("DeferUntilRequired", "deferUntil")


@pytest.mark.parametrize(("action", "start", "roles"), [
    (Action.AUTHORIZE, PatchState.PASSED, {Role.READER}),
    (Action.AUTHORIZE, PatchState.PASSED, {Role.APPROVER}),  # approvers decide, operators request
    (Action.APPROVE, PatchState.AUTHORIZED, {Role.OPERATOR}),  # an operator approving
    (Action.REJECT, PatchState.AUTHORIZED, {Role.READER}),
])
def test_a_person_without_the_role_is_refused(action, start, roles):
    with pytest.raises(ActorNotAllowed, match="lacks the app role"):
        transition(at(start), action, "bob", AT, "why", roles=roles)


@pytest.mark.parametrize(("action", "by"), [
    (Action.PASS, "anna"),  # only evidence passes an update
    (Action.FAIL, rule_actor(WEB)),
    (Action.AUTO_APPROVE, "anna"),  # only the category's rule approves automatically
    (Action.AUTO_APPROVE, rule_actor("db")),  # ... and only its own category's
    (Action.AUTHORIZE, EVIDENCE_ACTOR),  # a system name is not a person
    (Action.APPROVE, "rule:web"),
    (Action.APPROVE, " "),
])
def test_evidence_rules_and_people_each_act_only_as_themselves(action, by):
    start = {Action.PASS: PatchState.IN_TEST, Action.FAIL: PatchState.IN_TEST,
             Action.APPROVE: PatchState.AUTHORIZED, Action.AUTHORIZE: PatchState.PASSED,
             Action.AUTO_APPROVE: PatchState.PASSED}[action]
    with pytest.raises(ActorNotAllowed) as refused:
        transition(at(start), action, by, AT, "why", roles=OPERATOR | APPROVER)
    assert refused.value.rule == "ActorNotAllowed"


def test_first_seen_and_edits_are_not_state_changes():
    for action in (Action.FIRST_SEEN, Action.EDIT):
        with pytest.raises(InvalidTransition, match="not a change of state"):
            transition(at(PatchState.NEW), action, "olga", AT, roles=OPERATOR)


def test_times_carry_their_zone():
    with pytest.raises(ValueError, match="at"):
        transition(at(PatchState.NEW), Action.TEST, EVIDENCE_ACTOR, datetime(2026, 3, 2))


# --- the automatic rule and deferrals -----------------------------------------------------------------


def test_the_automatic_rule_approves_its_groups_once_baked():
    baked = at(PatchState.PASSED, evidence=EvidenceCounts(2, 0, AT - timedelta(hours=72)))
    assert auto_approval_due(baked, "security", ["security"], 72, AT)
    assert not auto_approval_due(baked, "security", ["security"], 73, AT)  # not baked long enough
    assert not auto_approval_due(baked, "other", ["security", "critical"], 0, AT)  # not its group
    assert not auto_approval_due(at(PatchState.FAILED), "security", ["security"], 0, AT)
    assert not auto_approval_due(at(PatchState.APPROVED), "security", ["security"], 0, AT)
    # Without the evidence's bake start, counted from when it passed.
    assert auto_approval_due(at(PatchState.PASSED), "critical", ["critical"], 24, AT)
    assert not auto_approval_due(at(PatchState.PASSED), "critical", ["critical"], 25, AT)


def test_the_automatic_rule_leaves_an_approval_a_person_revoked_to_people():
    counts = EvidenceCounts(2, 0, AT - timedelta(hours=72))
    requested = replace(authorized("olga"), evidence=counts)
    assert auto_approval_due(requested, "security", ["security"], 72, AT)
    approved, _ = transition(requested, Action.APPROVE, "anna", AT, "CAB", roles=APPROVER)
    revoked, _ = transition(approved, Action.REVOKE, "anna", AT, "regression", roles=APPROVER)
    assert revoked.state is PatchState.AUTHORIZED
    assert not auto_approval_due(revoked, "security", ["security"], 72, AT)
    by_rule, _ = transition(at(PatchState.PASSED, evidence=counts), Action.AUTO_APPROVE, rule_actor(WEB), AT)
    revoked_rule, _ = transition(by_rule, Action.REVOKE, "anna", AT, "regression", roles=APPROVER)
    assert not auto_approval_due(revoked_rule, "security", ["security"], 72, AT)


def test_a_deferred_request_is_pending_again_once_its_date_comes():
    deferred = at(PatchState.DEFERRED, defer_until=AT + timedelta(days=1))
    assert deferred.pending and not waiting_past_deferral(deferred, AT)
    assert waiting_past_deferral(deferred, AT + timedelta(days=1))


# --- bodies -------------------------------------------------------------------------------------------


def test_a_decision_body_names_every_field_at_fault():
    with pytest.raises(ApprovalBodyError) as refused:
        parse_decision({"decision": "defer"})
    assert [f for f, _ in refused.value.details] == ["justification", "deferUntil"]
    with pytest.raises(ApprovalBodyError) as refused:
        parse_decision({"decision": "maybe", "justification": "x", "colour": "blue"})
    assert {f for f, _ in refused.value.details} == {"decision", "colour"}
    with pytest.raises(ApprovalBodyError, match="deferUntil"):
        parse_decision({"decision": "approve", "justification": "x", "deferUntil": "2026-04-01T00:00:00Z"})
    with pytest.raises(ApprovalBodyError, match="zone"):
        parse_decision({"decision": "defer", "justification": "x", "deferUntil": "2026-04-01T00:00:00"})
    ok = parse_decision({"decision": "defer", "justification": "after the freeze",
                         "deferUntil": "2026-04-01T00:00:00Z"})
    assert ok.defer_until == datetime(2026, 4, 1, tzinfo=UTC)


def test_a_request_body_reads_keys_of_both_systems():
    parsed = parse_request({"category": "web", "justification": "monthly",
                            "patches": ["KB5034441", "openssl=3.0.2-0ubuntu1.12",
                                        {"osType": "Linux", "key": "curl=7.81.0-1ubuntu1.16"}]})
    assert [r.table_key for r in parsed.refs] == [
        "Windows|KB5034441", "Linux|openssl=3.0.2-0ubuntu1.12", "Linux|curl=7.81.0-1ubuntu1.16"]
    with pytest.raises(ApprovalBodyError) as refused:
        parse_request({"category": "web", "patches": ["openssl=1.0"]})
    assert {f for f, _ in refused.value.details} == {"justification"}
    with pytest.raises(ApprovalBodyError) as refused:
        parse_request({"category": "web", "justification": "x", "patches": ["openssl"]})
    assert [f for f, _ in refused.value.details] == ["patches.0"]
    with pytest.raises(ApprovalBodyError, match="not both"):
        parse_request({"category": "web", "justification": "x", "patches": ["KB1234"], "release": "r1"})
    with pytest.raises(ApprovalBodyError, match="more than once"):
        parse_request({"category": "web", "justification": "x", "patches": ["KB1234", "kb1234"]})
    with pytest.raises(ApprovalBodyError) as refused:  # every field at once
        parse_request({"category": "", "patches": ["openssl", "KB5034441"]})
    assert [f for f, _ in refused.value.details] == ["category", "justification", "patches.0"]


def test_facts_edits_replace_only_what_they_name():
    facts = PatchFacts(REF, title="openssl", references=("INC1",), justification="CVE")
    edited = facts.edited(parse_facts_edit({"impact": {"rebootRequired": False, "order": 3}}), "olga", AT)
    assert (edited.references, edited.justification, edited.impact.order) == (("INC1",), "CVE", 3)
    cleared = facts.edited(parse_facts_edit({"references": [], "justification": ""}), "olga", AT)
    assert (cleared.references, cleared.justification) == ((), None)
    with pytest.raises(FactsError) as refused:
        parse_facts_edit({"impact": {"expectedDowntimeMinutes": -1}, "references": [""], "title": "x"})
    assert {f for f, _ in refused.value.details} == {"impact.expectedDowntimeMinutes", "references", "title"}
    with pytest.raises(FactsError, match="at least one"):
        parse_facts_edit({})


# --- first seen ---------------------------------------------------------------------------------------


def test_the_catalogue_tells_each_version_it_does_not_hold_once():
    held = {"openssl": {"KBID": None, "PackageVersion": "3.0.2-1"}, "curl": {"PackageVersion": "7.81"}}
    fields = {"openssl": {"PackageName": "openssl", "PackageVersion": "3.0.2-2"},
              "curl": {"PackageName": "curl", "PackageVersion": "7.81"},
              "zlib": {"PackageName": "zlib", "PackageVersion": "1.2.11"}}
    versions = {"openssl": [{"PackageName": "openssl", "PackageVersion": "3.0.2-1"},
                            {"PackageName": "openssl", "PackageVersion": "3.0.2-3"}]}
    pending = {"openssl": 2, "curl": 0, "zlib": 1, "gone": -1}
    told: set = set()
    new = _new_versions("Linux", pending, fields, versions, held, told)
    assert [(v.key, v.fields["PackageVersion"], v.machines_needing) for v in new] == [
        ("openssl", "3.0.2-3", 2), ("openssl", "3.0.2-2", 2), ("zlib", "1.2.11", 1)]
    assert _new_versions("Linux", pending, fields, versions, held, told) == []  # a retried attempt


def test_only_critical_and_security_updates_are_announced():
    security = PatchFacts(REF, title="openssl", classification="Security Updates", first_seen=AT,
                          machines_needing_at_first_seen=12)
    note = first_seen_notification(security)
    assert note is not None and note.dedup_key == "Update.FirstSeen|Linux|openssl=3.0.2-0ubuntu1.12"
    assert (note.data["machinesNeeding"], note.data["packageVersion"]) == (12, "3.0.2-0ubuntu1.12")
    critical = PatchFacts(PatchRef(OsType.WINDOWS, kb="5034441"), classification="Critical Updates",
                          first_seen=AT)
    assert first_seen_notification(critical) is not None
    assert first_seen_notification(replace(security, classification="Other Updates")) is None
    assert first_seen_notification(replace(security, classification=None)) is None
