"""Releases and governed deployments through the local host (HTTP -> orchestrations -> ARM stand-in):
a test-ring run of a release records test evidence (passed, and failed with the reason where an update
failed); the approval rule refuses a production deployment of a release not approved; once approved, the
production run installs exactly the release's versions and reports the newer one the fleet offers held.

The fleet: two test-ring machines (one fails to install sudo) and a production machine that is offered a
newer openssl than the release's (local/arm/fleet.py: a full package entry in availableUpdates).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from local.arm.catalogue import lookup
from local.arm.fleet import parse_fleet
from local.functions_host import FunctionsHost
from local.stack import LocalStack
from local.workbook import load_workbook, logs_runner_for, run_query_item
from local.workbook.evaluate import resolve_parameters
from shared.governance.evidence_table import change_store, evidence_store
from shared.governance.patch_refs import parse_patch_ref
from shared.governance.patches import Action, PatchState
from shared.governance.patches_table import patch_inventory
from shared.model.machines import OsType, machine_key
from shared.principal import Role, encode_principal
from shared.settings import load_settings
from tests.integration.governance_setup import RUN_TIMEOUT, body, governed_stack, ringed_category

SUB = "55555555-5555-4555-8555-555555555555"
GROUP = "rg-rel"
CATEGORY = "rel-web"
OPENSSL = lookup("ubuntu-22.04", "openssl")
SUDO = lookup("ubuntu-22.04", "sudo")
assert OPENSSL is not None and SUDO is not None
TESTED_OPENSSL = f"openssl={OPENSSL.version}"
TESTED_SUDO = f"sudo={SUDO.version}"
NEWER_OPENSSL = OPENSSL.version + "+esm1"  # a later build of the same package


def _vm(name: str, updates: list[Any], tags: dict[str, str], **behaviours: Any) -> dict[str, Any]:
    return {"subscription": SUB, "resourceGroup": GROUP, "name": name, "kind": "azure-vm", "osType": "Linux",
            "osName": "ubuntu", "osVersion": "22.04", "location": "westeurope", "availableUpdates": updates,
            "tags": tags, "behaviours": behaviours}  # fmt: skip


FLEET = parse_fleet({"subscriptions": [{"id": SUB}], "machines": [
    _vm("rel-test-01", ["openssl", "sudo"], {"ring": "test"}),
    _vm("rel-test-02", ["openssl", "sudo"], {"ring": "test"}, failingPatches=["sudo"]),
    _vm("rel-prod-01", [{"name": "openssl", "version": NEWER_OPENSSL, "classifications": ["Security"]},
                        "sudo"], {}),
    _vm("rel-prod-02", ["openssl", "sudo"], {}),
]})  # fmt: skip


def rid(name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.Compute/virtualMachines/{name}"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    category = ringed_category(CATEGORY, "release flow", SUB, requiresApproval=True,
                               testEvidence={"minMachines": 1, "bakeHours": 0})
    with governed_stack(FLEET, category) as running:
        yield running


def deployment(name: str, release: str, targets: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "operatingSystem": "Linux", "targets": targets, "release": release,
            "schedule": {"startTime": "2099-01-01T02:00:00", "timeZone": "UTC"},
            "maintenanceWindowMinutes": 180, "rebootSetting": "Never"}  # fmt: skip


def run(stack: LocalStack, spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Create the deployment, run it, and answer its machines as GET /api/deployment-runs/{id} shows them."""
    created = stack.functions.request("POST", "/api/deployments", body=spec)
    assert created.status_code == 201, created.get_body()
    started = stack.functions.request("POST", f"/api/deployments/{spec['name']}/runs")
    assert started.status_code == 202, started.get_body()
    run_id = body(started)["runId"]
    final = stack.durable.wait_for_completion(run_id, timeout=RUN_TIMEOUT)
    assert final["runtimeStatus"] == "Completed", final
    shown = body(stack.functions.request("GET", f"/api/deployment-runs/{run_id}"))
    return {m["computer"]: m for m in shown["machines"]}


def release(stack: LocalStack, name: str, *keys: str) -> dict[str, Any]:
    created = stack.functions.request("POST", "/api/releases", body={
        "name": name, "category": CATEGORY, "items": [{"osType": "Linux", "key": k} for k in keys]})
    assert created.status_code == 201, created.get_body()
    return body(created)


def test_a_test_ring_run_records_evidence_passed_and_failed_with_the_reason(stack):
    release(stack, "rel-cycle-1", TESTED_OPENSSL, TESTED_SUDO)
    machines = run(stack, deployment("rel-test-ring", "rel-cycle-1",
                                     {"categories": [{"category": CATEGORY, "ring": "test"}]}))
    assert set(machines) == {"rel-test-01", "rel-test-02"}  # the production machine is not on the ring
    assert machines["rel-test-01"]["status"] == "succeeded"
    assert machines["rel-test-02"]["status"] == "partially succeeded"

    settings = load_settings()
    inventory = patch_inventory(settings)
    openssl, sudo = parse_patch_ref(OsType.LINUX, TESTED_OPENSSL), parse_patch_ref(OsType.LINUX, TESTED_SUDO)
    assert inventory.state(openssl, CATEGORY).state is PatchState.PASSED
    failed = inventory.state(sudo, CATEGORY)
    assert failed.state is PatchState.FAILED
    assert (failed.justification or "").startswith("failed on rel-test-02 in run "), failed
    evidence = {r.machine: r.outcome.value for r in evidence_store(settings).records(CATEGORY, sudo)}
    assert evidence == {machine_key(rid("rel-test-01")): "installed",
                        machine_key(rid("rel-test-02")): "failed"}
    # Each machine's change history: the run's installs, authorized as testing on the test ring.
    logged = stack.logs.query('UpdateRunProgress_CL | where UpdateRunName == "rel-test-ring" '
                              "| project Computer, PackageName, InstallationStatus, AuthorizedBy, Release")
    shown = {(r["Computer"], r["PackageName"], r["InstallationStatus"], r["AuthorizedBy"], r["Release"])
             for r in logged}
    assert shown == {
        ("rel-test-01", "openssl", "succeeded", "test ring", "rel-cycle-1"),
        ("rel-test-01", "sudo", "succeeded", "test ring", "rel-cycle-1"),
        ("rel-test-02", "openssl", "succeeded", "test ring", "rel-cycle-1"),
        ("rel-test-02", "sudo", "failed", "test ring", "rel-cycle-1"),
    }
    # Each machine's row of the run names the release too (the workbook's "Releases and rings").
    ran = stack.logs.query('UpdateRunMachine_CL | where UpdateRunName == "rel-test-ring" '
                           "| project Computer, Status, Release")
    assert {(r["Computer"], r["Status"], r["Release"]) for r in ran} == {
        ("rel-test-01", "succeeded", "rel-cycle-1"), ("rel-test-02", "partially succeeded", "rel-cycle-1")}
    # The workbook's Governance tab shows the run under its release, category and ring.
    workbook = load_workbook()
    [view] = [item for item in workbook.query_items() if item.name == "ring-runs"]
    runner = logs_runner_for(stack)
    try:
        values = resolve_parameters(workbook, {}, runner, stack.clock.now()).values
        shown_runs = run_query_item(view, values, runner, stack.clock.now()).as_dicts()
    finally:
        runner.close()
    [ring_run] = [r for r in shown_runs if r["UpdateRunName"] == "rel-test-ring"]
    # (Its category and ring come from the machines' Heartbeat_CL rows; this flow does not check them.)
    assert (ring_run["Release"], ring_run["Machines"], ring_run["Installed"], ring_run["Failed"],
            ring_run["TestRing"]) == ("rel-cycle-1", 2, 3, 1, 4)
    history = change_store(settings).history(machine_key(rid("rel-test-01")))
    assert {(row["Key"], row["Status"], row["AuthorizedBy"]) for row in history} >= {
        (TESTED_OPENSSL, "succeeded", "test ring"), (TESTED_SUDO, "succeeded", "test ring")}


def test_releases_from_what_passed_and_frozen_from_a_ring_and_the_api_rules(stack):
    # After the test-ring run: openssl passed, sudo failed; the test ring installed both somewhere.
    passed = stack.functions.request("POST", "/api/releases", body={
        "name": "rel-from-passed", "category": CATEGORY, "from": "passed"})
    assert passed.status_code == 201, passed.get_body()
    assert [item["key"] for item in body(passed)["items"]] == [TESTED_OPENSSL]
    frozen = stack.functions.request("POST", "/api/releases", body={
        "name": "rel-from-ring", "category": CATEGORY, "from": "ring", "ring": "test"})
    assert frozen.status_code == 201, frozen.get_body()
    assert body(frozen)["source"] == "ring" and body(frozen)["ring"] == "test"
    assert sorted(item["key"] for item in body(frozen)["items"]) == [TESTED_OPENSSL, TESTED_SUDO]

    again = stack.functions.request("POST", "/api/releases", body={
        "name": "REL-FROM-RING", "category": CATEGORY, "items": [{"osType": "Linux", "key": TESTED_SUDO}]})
    assert again.status_code == 409 and body(again)["error"]["field"] == "name"
    bad = stack.functions.request("POST", "/api/releases", body={
        "name": "bad name", "category": CATEGORY, "items": [{"osType": "Linux", "key": "openssl"}]})
    assert bad.status_code == 400
    assert [d["field"] for d in body(bad)["error"]["details"]] == ["name", "items.0"]
    unknown = stack.functions.request("POST", "/api/releases", body={
        "name": "rel-nowhere", "category": "no-such-category", "from": "passed"})
    assert unknown.status_code == 400 and body(unknown)["error"]["field"] == "category"
    listed = body(stack.functions.request("GET", f"/api/releases?category={CATEGORY}"))
    assert {"rel-from-passed", "rel-from-ring"} <= {r["name"] for r in listed["releases"]}
    assert stack.functions.request("GET", "/api/releases/rel-from-ring").status_code == 200
    assert stack.functions.request("GET", "/api/releases/no-such").status_code == 404
    # Immutable: no edit; deleted when no deployment names it.
    assert stack.functions.request("PUT", "/api/releases/rel-from-passed", body={}).status_code in (404, 405)
    assert stack.functions.request("DELETE", "/api/releases/rel-from-passed").status_code == 204
    reader = FunctionsHost(stack.app, stack.durable.client_binding_json,
                           signed_in_principal=encode_principal("rita", [Role.READER]))
    assert reader.request("GET", "/api/releases/rel-from-ring").status_code == 200
    assert reader.request("POST", "/api/releases", body={
        "name": "rel-reader", "category": CATEGORY, "from": "passed"}).status_code == 403


def test_production_needs_an_approved_release_then_installs_exactly_it_and_holds_the_newer(stack):
    release(stack, "rel-prod-1", TESTED_OPENSSL, TESTED_SUDO)
    spec = deployment("rel-production", "rel-prod-1", {"machines": [rid("rel-prod-01")]})
    refused = stack.functions.request("POST", "/api/deployments", body=spec)
    assert refused.status_code == 400, refused.get_body()
    error = body(refused)["error"]
    assert error["code"] == "ApprovalRequired" and error["field"] == "release"
    assert "not approved" in error["message"] or "requires approval" in error["message"]

    # A request and a second person's approval (the patch inventory's rules), as the approvals API does.
    settings = load_settings()
    inventory = patch_inventory(settings)
    now = datetime.now(UTC)
    for key in (TESTED_OPENSSL, TESTED_SUDO):
        ref = parse_patch_ref(OsType.LINUX, key)
        if inventory.state(ref, CATEGORY).state is not PatchState.PASSED:
            inventory.record_evidence_result(ref, CATEGORY, "passed", "tested by hand", now)
        inventory.change(ref, CATEGORY, Action.AUTHORIZE, "olga", now, "fit for web", roles=[Role.OPERATOR],
                         request_id="req-rel-1")
        inventory.change(ref, CATEGORY, Action.APPROVE, "adam", now, "change board 42", roles=[Role.APPROVER],
                         request_id="req-rel-1")

    machines = run(stack, spec)
    prod = machines["rel-prod-01"]
    assert prod["held"] == [{"update": f"openssl: offered {NEWER_OPENSSL}, tested {OPENSSL.version}",
                             "reason": "held: version not tested"}]
    assert prod["installed"] == 1 and prod["reason"] == "held: version not tested"
    history = change_store(settings).history(machine_key(rid("rel-prod-01")))
    assert [(row["Key"], row["Status"], row["AuthorizedBy"]) for row in history] == [
        (TESTED_SUDO, "succeeded", "req-rel-1")]
    logged = stack.logs.query('UpdateRunProgress_CL | where UpdateRunName == "rel-production" '
                              "| project PackageName, PackageVersion, Authorized, AuthorizedBy")
    assert [(r["PackageName"], r["PackageVersion"], r["Authorized"], r["AuthorizedBy"]) for r in logged] == [
        ("sudo", SUDO.version, True, "req-rel-1")]
    # A deployment naming the release keeps it from being deleted.
    in_use = stack.functions.request("DELETE", "/api/releases/rel-prod-1")
    assert in_use.status_code == 409 and body(in_use)["error"]["deployments"] == ["rel-production"]


def test_approved_only_installs_each_machines_approved_updates_on_its_ring(stack):
    # Runs after the approvals above: openssl and sudo at the tested versions are approved for the category.
    production = {"categories": [{"category": CATEGORY, "ring": "production"}]}
    spec = deployment("rel-approved-only", "unused", production)
    del spec["release"]
    unapproved = stack.functions.request("POST", "/api/deployment-runs", body={
        **spec, "name": "rel-by-class", "classifications": ["Critical", "Security"]})
    assert unapproved.status_code == 400 and body(unapproved)["error"]["code"] == "ApprovalRequired"

    machines = run(stack, spec | {"approvedOnly": True})
    assert set(machines) == {"rel-prod-01", "rel-prod-02"}
    assert machines["rel-prod-02"]["status"] == "succeeded" and machines["rel-prod-02"]["installed"] == 2
    # prod-01 has the approved sudo already, and is offered openssl only at a version nobody approved.
    assert machines["rel-prod-01"]["status"] == "not needed"
    assert machines["rel-prod-01"]["reason"] == "held: version not tested"
    history = change_store(load_settings()).history(machine_key(rid("rel-prod-02")))
    assert {(row["Key"], row["AuthorizedBy"]) for row in history} == {
        (TESTED_OPENSSL, "req-rel-1"), (TESTED_SUDO, "req-rel-1")}
    # No release named: the rows' Release is empty.
    logged = stack.logs.query('UpdateRunProgress_CL | where UpdateRunName == "rel-approved-only" '
                              "| project PackageName, Release")
    ran = stack.logs.query('UpdateRunMachine_CL | where UpdateRunName == "rel-approved-only" '
                           "| project Computer, Release")
    assert len(logged) == 2 and {r["Release"] for r in logged} == {""}
    assert {(r["Computer"], r["Release"]) for r in ran} == {("rel-prod-01", ""), ("rel-prod-02", "")}


def test_the_rule_is_checked_again_when_a_run_starts(stack):
    # Runs last: it revokes an approval the tests above rely on.
    spec = deployment("rel-revoked", "rel-prod-1", {"machines": [rid("rel-prod-02")]})
    created = stack.functions.request("POST", "/api/deployments", body=spec)
    assert created.status_code == 201, created.get_body()
    sudo = parse_patch_ref(OsType.LINUX, TESTED_SUDO)
    patch_inventory(load_settings()).change(sudo, CATEGORY, Action.REVOKE, "adam", datetime.now(UTC),
                                            "regression reported", roles=[Role.APPROVER])
    started = stack.functions.request("POST", "/api/deployments/rel-revoked/runs")
    run_id = body(started)["runId"]
    stack.durable.wait_for_completion(run_id, timeout=RUN_TIMEOUT)
    shown = body(stack.functions.request("GET", f"/api/deployment-runs/{run_id}"))
    assert shown["state"] == "failed"
    assert shown["error"].startswith("release: ApprovalRequired") and TESTED_SUDO in shown["error"]
    assert shown["machines"] == []
