"""Approval over HTTP through the local host: an operator requests, a second person approves with a
justification, the requester may not decide, every step is in the history, and the past is answerable."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import function_app
from local.functions_host import FunctionsHost
from shared.governance.categories import validate_category
from shared.governance.categories_table import category_store
from shared.governance.notifications import EventType, notification_outbox
from shared.governance.patch_refs import PatchRef
from shared.governance.patches import EvidenceCounts, PatchFacts, PatchState
from shared.governance.patches_table import PatchInventory, patch_inventory
from shared.governance.releases import Release
from shared.governance.releases_table import release_store
from shared.model.machines import OsType
from shared.settings import Settings, load_settings
from tests.integration.governance_setup import ANNA, BOB, OLGA, RITA, call


@pytest.fixture
def host(app_settings) -> FunctionsHost:
    return FunctionsHost(function_app.app)


@pytest.fixture
def settings(app_settings) -> Settings:
    return load_settings()


@pytest.fixture
def inventory(settings) -> PatchInventory:
    return patch_inventory(settings)


def new_category(settings: Settings, **changes: Any) -> str:
    name = f"web-{uuid.uuid4().hex[:8]}"
    # A tag no machine of any test has: the category places nobody, so other tests' fleets (which share this
    # session's tables) stay uncategorised.
    body = {"name": name, "criticality": 2, "membership": {"tags": {"approvals-test": name}}} | changes
    category_store(settings).create(validate_category(body), datetime.now(UTC))
    return name


def passed_update(inventory: PatchInventory, category: str, classification: str = "Security Updates",
                  baked_since: datetime | None = None) -> PatchRef:
    ref = PatchRef(OsType.LINUX, package=f"libapi{uuid.uuid4().hex[:8]}", version="1.0-1ubuntu0.1")
    inventory.record_first_seen(PatchFacts(ref, title=f"{ref.package} fix", classification=classification,
                                           first_seen=datetime.now(UTC) - timedelta(days=5)))
    inventory.record_evidence_result(ref, category, PatchState.PASSED, None, datetime.now(UTC),
                                     EvidenceCounts(installed=2, baked_since=baked_since))
    return ref


def url(ref: PatchRef) -> str:
    return f"/api/patches/{ref.os_type.value}/{ref.key.replace('=', '%3D')}"


def notes(settings: Settings, event_type: EventType, request_id: str) -> list[dict[str, Any]]:
    return [r for r in notification_outbox(settings).recorded(event_type)
            if r["Data"].get("requestId") == request_id]


def test_request_decide_and_the_history_and_the_past(host, settings, inventory):
    category = new_category(settings)
    first, second = passed_update(inventory, category), passed_update(inventory, category)
    untested = PatchRef(OsType.LINUX, package=f"libnew{uuid.uuid4().hex[:8]}", version="2.0")

    # A reader creates nothing; an update that has not passed cannot be requested (nothing changes).
    status, body = call(host, RITA, "POST", "/api/approvals",
                        {"category": category, "patches": [first.key], "justification": "monthly"})
    assert status == 403 and body["error"]["code"] == "Forbidden"
    status, body = call(host, OLGA, "POST", "/api/approvals", {
        "category": category, "patches": [first.key, untested.key], "justification": "monthly"})
    assert status == 409 and body["error"]["code"] == "InvalidTransition"
    assert [d["field"] for d in body["error"]["details"]] == ["patches.1"]
    assert inventory.state(first, category).state is PatchState.PASSED

    before = datetime.now(UTC)
    status, request = call(host, OLGA, "POST", "/api/approvals", {
        "category": category, "patches": [first.key, {"osType": "Linux", "key": second.key}],
        "justification": "fixes CVE-2026-0001 on the web tier"})
    assert status == 201, request
    request_id = request["id"]
    assert (request["state"], request["requestedBy"]) == ("pending", "olga@contoso.com")
    assert inventory.state(second, category).state is PatchState.AUTHORIZED
    [requested] = notes(settings, EventType.APPROVAL_REQUESTED, request_id)
    assert requested["Data"]["patches"] == [{"osType": "Linux", "key": first.key},
                                            {"osType": "Linux", "key": second.key}]
    status, pending = call(host, RITA, "GET", f"/api/approvals?state=pending&category={category}")
    assert status == 200 and [r["id"] for r in pending["requests"]] == [request_id]

    decision = f"/api/approvals/{request_id}/decision"
    # An operator approving: 403, the role.
    status, body = call(host, OLGA, "POST", decision, {"decision": "approve", "justification": "fine"})
    assert status == 403 and "PatchManagement.Approver" in body["error"]["message"]
    # A missing justification: 400 naming the field; a deferral without a date names both.
    status, body = call(host, ANNA, "POST", decision, {"decision": "approve"})
    assert status == 400 and [d["field"] for d in body["error"]["details"]] == ["justification"]
    status, body = call(host, ANNA, "POST", decision, {"decision": "defer", "justification": " "})
    assert status == 400 and {d["field"] for d in body["error"]["details"]} == {"justification", "deferUntil"}

    status, decided = call(host, ANNA, "POST", decision,
                           {"decision": "approve", "justification": "passed on 2 test-ring web servers"})
    assert status == 200, decided
    assert (decided["state"], decided["decidedBy"]) == ("approved", "anna@contoso.com")
    after = datetime.now(UTC)
    status, again = call(host, ANNA, "POST", decision, {"decision": "reject", "justification": "no"})
    assert status == 409 and again["error"]["code"] == "RequestDecided"
    [granted] = notes(settings, EventType.APPROVAL_GRANTED, request_id)
    assert granted["Data"]["decidedBy"] == "anna@contoso.com"
    assert granted["Data"]["requestedBy"] == "olga@contoso.com"

    # The history says who, when, from, to and why.
    status, detail = call(host, RITA, "GET", url(first))
    assert status == 200
    [state] = [c for c in detail["categories"] if c["category"] == category]
    assert (state["state"], state["by"], state["requestId"]) == ("approved", "anna@contoso.com", request_id)
    moves = [(h["by"], h["from"], h["to"], h["justification"], h["requestId"])
             for h in detail["history"] if h["category"] == category]
    assert moves == [
        ("anna@contoso.com", "authorized", "approved", "passed on 2 test-ring web servers", request_id),
        ("olga@contoso.com", "passed", "authorized", "fixes CVE-2026-0001 on the web tier", request_id),
        ("system:evidence", "new", "passed", None, None),
    ]
    assert before <= datetime.fromisoformat(detail["history"][0]["at"]) <= after

    # What was approved at a past time, from the history.
    status, then = call(host, RITA, "GET", f"/api/patches?category={category}&approvedAt="
                        f"{before.isoformat().replace('+00:00', 'Z')}")
    assert status == 200 and then["patches"] == []
    status, now = call(host, RITA, "GET", f"/api/patches?category={category}&approvedAt="
                       f"{(after + timedelta(seconds=1)).isoformat().replace('+00:00', 'Z')}")
    assert sorted(p["key"] for p in now["patches"]) == sorted([first.key, second.key])
    assert inventory.approved(category, before) == set()
    status, listed = call(host, RITA, "GET", f"/api/patches?category={category}&state=approved")
    assert sorted(p["key"] for p in listed["patches"]) == sorted([first.key, second.key])


def test_the_requester_may_not_decide_their_own_request(host, settings, inventory):
    category = new_category(settings)
    ref = passed_update(inventory, category)
    status, request = call(host, BOB, "POST", "/api/approvals",
                           {"category": category, "patches": [ref.key], "justification": "urgent"})
    assert status == 201
    status, body = call(host, BOB, "POST", f"/api/approvals/{request['id']}/decision",
                        {"decision": "approve", "justification": "I checked it myself"})
    assert status == 403 and body["error"]["code"] == "SeparationOfDuties"
    assert "separation of duties" in body["error"]["message"]
    assert "bob@contoso.com" in body["error"]["message"]
    assert inventory.state(ref, category).state is PatchState.AUTHORIZED
    # Another approver defers it, then it is pending again once the date comes (not before).
    until = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0)
    status, deferred = call(host, ANNA, "POST", f"/api/approvals/{request['id']}/decision", {
        "decision": "defer", "justification": "after the change freeze",
        "deferUntil": until.isoformat().replace("+00:00", "Z")})
    assert status == 200 and deferred["state"] == "deferred"
    assert inventory.state(ref, category).defer_until == until
    status, pending = call(host, RITA, "GET", f"/api/approvals?state=pending&category={category}")
    assert pending["count"] == 0
    [note] = notes(settings, EventType.APPROVAL_DEFERRED, request["id"])
    assert note["Data"]["deferUntil"] == until.isoformat().replace("+00:00", "Z")


def test_a_release_is_approved_in_bulk_and_a_rejection_recorded(host, settings, inventory):
    category = new_category(settings)
    items = tuple(sorted(passed_update(inventory, category) for _ in range(3)))
    name = f"rel-{uuid.uuid4().hex[:8]}"
    release_store(settings).create(Release(name, category, "March baseline", items, "olga@contoso.com",
                                           datetime.now(UTC), "passed"))
    status, request = call(host, OLGA, "POST", "/api/approvals",
                           {"category": category, "release": name, "justification": "March baseline"})
    assert status == 201 and request["release"] == name and len(request["patches"]) == 3
    status, decided = call(host, ANNA, "POST", f"/api/approvals/{request['id']}/decision",
                           {"decision": "reject", "justification": "wait for the vendor's hotfix"})
    assert status == 200 and decided["state"] == "rejected"
    assert {inventory.state(ref, category).state for ref in items} == {PatchState.REJECTED}
    [note] = notes(settings, EventType.APPROVAL_REJECTED, request["id"])
    assert note["Data"]["release"] == name and len(note["Data"]["patches"]) == 3

    other = new_category(settings)
    status, body = call(host, OLGA, "POST", "/api/approvals",
                        {"category": other, "release": name, "justification": "x"})
    assert status == 400 and body["error"]["field"] == "release"
    status, body = call(host, OLGA, "POST", "/api/approvals",
                        {"category": "no-such-category", "patches": ["KB5034441"], "justification": "x"})
    assert status == 400 and body["error"]["field"] == "category"


def test_a_category_rule_approves_what_it_covers_and_says_so(host, settings, inventory):
    category = new_category(settings, autoApprove={"classifications": ["security"], "minBakeHours": 72})
    baked = passed_update(inventory, category, baked_since=datetime.now(UTC) - timedelta(hours=73))
    fresh = passed_update(inventory, category, baked_since=datetime.now(UTC) - timedelta(hours=1))
    other = passed_update(inventory, category, classification="Other Updates",
                          baked_since=datetime.now(UTC) - timedelta(days=30))

    status, listed = call(host, RITA, "GET", f"/api/patches?category={category}")
    assert status == 200
    states = {p["key"]: p["categories"][0] for p in listed["patches"]
              if p["key"] in {baked.key, fresh.key, other.key}}
    assert (states[baked.key]["state"], states[baked.key]["by"]) == ("approved", f"rule:{category}")
    assert states[fresh.key]["state"] == "passed" and states[other.key]["state"] == "passed"
    history = inventory.history(baked, category)
    assert (history[0].by, history[0].to_state) == (f"rule:{category}", PatchState.APPROVED)
    assert "automatic rule" in (history[0].justification or "")
    granted = [r for r in notification_outbox(settings).recorded(EventType.APPROVAL_GRANTED)
               if r["Data"]["category"] == category]
    assert [(g["Data"]["decidedBy"], g["Data"]["patches"][0]["key"]) for g in granted] == [
        (f"rule:{category}", baked.key)]
    call(host, RITA, "GET", f"/api/patches?category={category}")  # read again: approved once
    assert len(inventory.history(baked, category)) == len(history)


def test_an_operator_edits_an_updates_facts_and_a_reader_cannot(host, settings, inventory):
    category = new_category(settings)
    ref = passed_update(inventory, category)
    status, detail = call(host, RITA, "PATCH", url(ref), {"justification": "x"})
    assert status == 403
    status, detail = call(host, OLGA, "PATCH", url(ref), {
        "impact": {"rebootRequired": True, "expectedDowntimeMinutes": 10, "dependencies": [], "order": 1},
        "references": ["INC0042"], "justification": "CVE-2026-0001"})
    assert status == 200, detail
    assert detail["impact"]["rebootRequired"] is True and detail["references"] == ["INC0042"]
    assert detail["history"][0]["action"] == "edit" and detail["history"][0]["by"] == "olga@contoso.com"
    bad = {"impact": {"expectedDowntimeMinutes": -5}, "colour": 1}
    status, body = call(host, OLGA, "PATCH", url(ref), bad)
    assert status == 400 and {d["field"] for d in body["error"]["details"]} == {
        "impact.expectedDowntimeMinutes", "colour"}
    status, body = call(host, RITA, "GET", "/api/patches/Linux/not-a-version")
    assert status == 404 and body["error"]["code"] == "PatchNotFound"
