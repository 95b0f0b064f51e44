"""Through the local host: a request for a release whose items are partly requested already asks only for the
rest (and says which it left out, with their state); revoking an approval with separation of duties; a
category still named by releases, waiting requests or deployments is not deleted."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import function_app
from local.functions_host import FunctionsHost
from shared.azure.log_outbox import _rows, log_outbox
from shared.governance.categories import validate_category
from shared.governance.categories_table import category_store
from shared.governance.notifications import EventType, notification_outbox
from shared.governance.patch_refs import PatchRef
from shared.governance.patches import Action, PatchState
from shared.governance.patches_table import PatchInventory, patch_inventory
from shared.governance.releases import Release
from shared.governance.releases_table import release_store
from shared.log_tables import PATCH_INVENTORY
from shared.settings import Settings, load_settings
from tests.integration.governance_setup import ANNA, BOB, OLGA, RITA, call
from tests.integration.test_approvals_api import passed_update


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
    """A category of no machine (Azurite is shared by the session: the fleet's placement stays as it was)."""
    name = f"gap-{uuid.uuid4().hex[:8]}"
    category_store(settings).create(validate_category({
        "name": name, "criticality": 2, "membership": {"tags": {"gaps": uuid.uuid4().hex}},
    } | changes), datetime.now(UTC))
    return name


def release_of(settings: Settings, category: str, items: tuple[PatchRef, ...]) -> str:
    name = f"rel-{uuid.uuid4().hex[:8]}"
    release_store(settings).create(Release(name, category, "baseline", tuple(sorted(items)),
                                           "olga@contoso.com", datetime.now(UTC), "passed"))
    return name


def test_a_release_partly_requested_already_asks_only_for_the_rest(host, settings, inventory):
    category = new_category(settings)
    first, second, third = (passed_update(inventory, category) for _ in range(3))
    status, earlier = call(host, OLGA, "POST", "/api/approvals",
                           {"category": category, "patches": [first.key], "justification": "urgent fix"})
    assert status == 201
    status, _ = call(host, ANNA, "POST", f"/api/approvals/{earlier['id']}/decision",
                     {"decision": "approve", "justification": "CAB 12"})
    assert status == 200
    status, other = call(host, OLGA, "POST", "/api/approvals",
                         {"category": category, "patches": [second.key], "justification": "second fix"})
    assert status == 201
    release = release_of(settings, category, (first, second, third))

    status, request = call(host, OLGA, "POST", "/api/approvals",
                           {"category": category, "release": release, "justification": "the baseline"})
    assert status == 201, request
    assert request["patches"] == [{"osType": "Linux", "key": third.key}]
    skipped = {s["key"]: s for s in request["skipped"]}
    assert {k: s["state"] for k, s in skipped.items()} == {first.key: "approved", second.key: "authorized"}
    assert earlier["id"] in skipped[first.key]["reason"] and other["id"] in skipped[second.key]["reason"]
    assert skipped[first.key]["reason"].startswith("already approved since ")
    # Only the update asked for moved, under the new request; the others kept theirs.
    assert inventory.state(third, category).request_id == request["id"]
    assert inventory.state(first, category).request_id == earlier["id"]
    assert inventory.state(second, category).request_id == other["id"]
    [requested] = [r for r in notification_outbox(settings).recorded(EventType.APPROVAL_REQUESTED)
                   if r["Data"]["requestId"] == request["id"]]
    assert requested["Data"]["patches"] == [{"osType": "Linux", "key": third.key}]
    status, read = call(host, RITA, "GET", f"/api/approvals/{request['id']}")
    assert status == 200 and read["skipped"] == request["skipped"]

    # Nothing left to request: 409 naming the rule and each update with its state.
    status, refused = call(host, OLGA, "POST", "/api/approvals",
                           {"category": category, "release": release, "justification": "again"})
    assert status == 409 and refused["error"]["code"] == "AlreadyRequested"
    assert refused["error"]["field"] == "release"
    assert len(refused["error"]["details"]) == 3
    assert "nothing left to request" in refused["error"]["message"]
    # An update that has not passed still refuses the whole request (nothing is skipped for it).
    untested = PatchRef(first.os_type, package=f"libnew{uuid.uuid4().hex[:8]}", version="1.0")
    status, refused = call(host, OLGA, "POST", "/api/approvals", {
        "category": category, "patches": [first.key, untested.key], "justification": "x"})
    assert status == 409 and refused["error"]["code"] == "InvalidTransition"
    assert [d["field"] for d in refused["error"]["details"]] == ["patches.1"]


def queued_rows(settings: Settings, ref: PatchRef) -> list[dict[str, Any]]:
    outbox = log_outbox(settings)
    return [row for envelope in outbox._envelopes(PATCH_INVENTORY) for row in _rows(envelope)
            if row["PatchKey"] == ref.key]


def test_an_approver_other_than_the_requester_revokes_an_approval(host, settings, inventory):
    category = new_category(settings)
    first, second = passed_update(inventory, category), passed_update(inventory, category)
    status, request = call(host, BOB, "POST", "/api/approvals",
                           {"category": category, "patches": [first.key, second.key], "justification": "fix"})
    assert status == 201
    decision = f"/api/approvals/{request['id']}/decision"
    # A request not approved yet has no approval to revoke.
    status, body = call(host, ANNA, "POST", decision, {"decision": "revoke", "justification": "x"})
    assert status == 409 and body["error"]["code"] == "RequestNotApproved"
    status, approved = call(host, ANNA, "POST", decision, {"decision": "approve", "justification": "CAB 7"})
    assert status == 200 and approved["state"] == "approved"

    # The requester may not revoke (separation of duties, as for approving); a justification is required;
    # an operator without the Approver role may not.
    status, body = call(host, BOB, "POST", decision, {"decision": "revoke", "justification": "mine"})
    assert status == 403 and body["error"]["code"] == "SeparationOfDuties"
    status, body = call(host, ANNA, "POST", decision, {"decision": "revoke"})
    assert status == 400 and [d["field"] for d in body["error"]["details"]] == ["justification"]
    status, body = call(host, OLGA, "POST", decision, {"decision": "revoke", "justification": "x"})
    assert status == 403 and body["error"]["code"] == "Forbidden"
    assert inventory.state(first, category).state is PatchState.APPROVED

    status, revoked = call(host, ANNA, "POST", decision,
                           {"decision": "revoke", "justification": "regression INC0042 on web-07"})
    assert status == 200, revoked
    assert (revoked["state"], revoked["decidedBy"]) == ("pending", None)
    [undone] = revoked["revocations"]
    assert (undone["decidedBy"], undone["decisionJustification"]) == ("anna@contoso.com", "CAB 7")
    why = "regression INC0042 on web-07"
    assert (undone["revokedBy"], undone["justification"]) == ("anna@contoso.com", why)
    for ref in (first, second):
        status_now = inventory.state(ref, category)
        assert (status_now.state, status_now.request_id) == (PatchState.AUTHORIZED, request["id"])
        [latest, *_] = inventory.history(ref, category)
        assert (latest.action, latest.by, latest.from_state, latest.to_state, latest.justification) == (
            Action.REVOKE, "anna@contoso.com", PatchState.APPROVED, PatchState.AUTHORIZED,
            "regression INC0042 on web-07")
        rows = {(r["Action"], r["FromState"], r["ToState"], r["ChangedBy"])
                for r in queued_rows(settings, ref)}
        assert ("revoke", "approved", "authorized", "anna@contoso.com") in rows
    assert inventory.approved(category) == set()
    [note] = [r for r in notification_outbox(settings).recorded(EventType.APPROVAL_REVOKED)
              if r["Data"]["requestId"] == request["id"]]
    assert (note["Data"]["decidedBy"], note["Data"]["requestedBy"]) == ("anna@contoso.com", "bob@contoso.com")
    assert sorted(p["key"] for p in note["Data"]["patches"]) == sorted([first.key, second.key])

    # Pending again: in the queue, and an approver decides it anew (here: rejects it).
    status, pending = call(host, RITA, "GET", f"/api/approvals?state=pending&category={category}")
    assert [r["id"] for r in pending["requests"]] == [request["id"]]
    status, rejected = call(host, ANNA, "POST", decision, {"decision": "reject", "justification": "INC0042"})
    assert status == 200 and rejected["state"] == "rejected" and len(rejected["revocations"]) == 1
    assert inventory.state(first, category).state is PatchState.REJECTED


def test_a_categorys_automatic_rule_does_not_approve_again_what_a_person_revoked(host, settings, inventory):
    category = new_category(settings, autoApprove={"classifications": ["security"], "minBakeHours": 1})
    ref = passed_update(inventory, category, baked_since=datetime.now(UTC) - timedelta(hours=2))
    status, request = call(host, OLGA, "POST", "/api/approvals",
                           {"category": category, "patches": [ref.key], "justification": "fix"})
    assert status == 201
    decision = f"/api/approvals/{request['id']}/decision"
    assert call(host, ANNA, "POST", decision, {"decision": "approve", "justification": "CAB"})[0] == 200
    assert call(host, ANNA, "POST", decision, {"decision": "revoke", "justification": "regression"})[0] == 200
    # Reading the queue applies the rules (as the hourly timer does): the revoked update stays authorized.
    status, pending = call(host, RITA, "GET", f"/api/approvals?state=pending&category={category}")
    assert [r["id"] for r in pending["requests"]] == [request["id"]]
    now = inventory.state(ref, category)
    assert (now.state, now.by) == (PatchState.AUTHORIZED, "anna@contoso.com")


def test_a_category_still_named_is_not_deleted(host, settings, inventory):
    category = new_category(settings)
    ref = passed_update(inventory, category)
    release = release_of(settings, category, (ref,))
    status, request = call(host, OLGA, "POST", "/api/approvals",
                           {"category": category, "patches": [ref.key], "justification": "fix"})
    assert status == 201
    deployment = f"dep-{uuid.uuid4().hex[:8]}"
    status, body = call(host, OLGA, "POST", "/api/deployments", {
        "name": deployment, "operatingSystem": "Linux", "targets": {"categories": [{"category": category}]},
        "approvedOnly": True, "schedule": {"startTime": "2099-01-01T02:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 120})
    assert status == 201, body

    status, refused = call(host, OLGA, "DELETE", f"/api/categories/{category.upper()}")
    assert status == 409 and refused["error"]["code"] == "CategoryInUse"
    error = refused["error"]
    assert (error["releases"], error["approvalRequests"], error["deployments"]) == (
        [release], [request["id"]], [deployment])
    assert release in refused["error"]["message"] and request["id"] in refused["error"]["message"]
    assert call(host, RITA, "GET", f"/api/categories/{category}")[0] == 200

    # Once nothing names it (deployment and release deleted, request decided), it goes.
    assert call(host, OLGA, "DELETE", f"/api/deployments/{deployment}")[0] == 204
    assert call(host, OLGA, "DELETE", f"/api/releases/{release}")[0] == 204
    status, refused = call(host, OLGA, "DELETE", f"/api/categories/{category}")
    assert status == 409 and refused["error"]["approvalRequests"] == [request["id"]]
    assert refused["error"]["releases"] == [] and refused["error"]["deployments"] == []
    status, _ = call(host, ANNA, "POST", f"/api/approvals/{request['id']}/decision",
                     {"decision": "reject", "justification": "category retired"})
    assert status == 200
    status, deleted = call(host, OLGA, "DELETE", f"/api/categories/{category}")
    assert status == 200 and deleted["deleted"] == category
    assert call(host, OLGA, "DELETE", "/api/categories/no-such-category")[0] == 404
