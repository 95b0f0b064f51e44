"""GET /api/machines/{id}/changes through the local host: a machine's installs, newest first and paged, each
with its run, deployment and status, the test-ring evidence behind it and the approval behind it, over batches
recorded as deployment batches record them (shared.deployments.governed.record_batch) and approvals made
through the API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

import function_app
from local.functions_host import FunctionsHost
from shared.deployments.governed import evaluate, record_batch
from shared.deployments.results import patch_progress_rows
from shared.fleet.machines_table import MachineInventory
from shared.governance.categories import validate_category
from shared.governance.categories_table import category_store
from shared.governance.evidence_table import evidence_store
from shared.governance.patch_refs import PatchRef
from shared.governance.patches import PatchFacts, PatchState
from shared.governance.patches_table import patch_inventory
from shared.model.install_outcome import InstallationState, PatchInstallResult
from shared.model.machines import Machine, MachineKind, OsType, PowerState
from shared.principal import encode_principal
from shared.settings import load_settings
from tests.integration.conftest import SUBSCRIPTION
from tests.integration.governance_setup import ANNA, OLGA, RITA, call


def vm(name: str) -> Machine:
    return Machine(
        resource_id=f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/"
        f"{name}",
        name=name, computer_name=f"{name}.contoso.com", kind=MachineKind.AZURE_VM,
        subscription_id=SUBSCRIPTION, resource_group="rg", location="westeurope", os_type=OsType.LINUX,
        os_name="ubuntu", os_version="22.04", power_state=PowerState.RUNNING, patch_mode="Manual",
    )  # fmt: skip


def result(ref: PatchRef, state: InstallationState) -> PatchInstallResult:
    return PatchInstallResult(f"{ref.package}_{ref.version}", str(ref.package), ("Security",), state,
                              version=ref.version)


@pytest.fixture
def host(app_settings) -> FunctionsHost:
    return FunctionsHost(function_app.app)


@pytest.fixture
def scenario(app_settings, host) -> dict[str, Any]:
    """A category with a test ring (one machine) and production (one machine). Three days ago the test ring
    installed openssl and failed curl; openssl passed, was requested and approved through the API; now
    production installed openssl (approved) and sudo (never approved: unauthorized), then ran again."""
    settings = load_settings()
    tag = uuid.uuid4().hex[:8]
    name = f"chg-{tag}"
    category = validate_category({
        "name": name, "criticality": 2, "membership": {"tags": {"chg": tag}},
        "rings": [{"name": "test", "membership": {"tags": {"ring": "test"}}}, {"name": "production"}],
        "testEvidence": {"minMachines": 1, "bakeHours": 24},
    })  # fmt: skip
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=3)
    category_store(settings).create(category, start)
    tester, prod = vm(f"tst-{tag}"), vm(f"prd-{tag}")
    service = TableServiceClient.from_connection_string(app_settings["STORAGE_CONNECTION_STRING"])
    machines = MachineInventory(service)
    machines.ensure()
    machines.record([tester, prod], start - timedelta(hours=1), extra={
        tester.key: {"AssetCategory": name, "Ring": "test"},
        prod.key: {"AssetCategory": name, "Ring": "production"}})

    openssl = PatchRef(OsType.LINUX, package=f"openssl{tag}", version="3.0.2-0ubuntu1.15")
    curl = PatchRef(OsType.LINUX, package=f"curl{tag}", version="7.81.0-1ubuntu1.16")
    sudo = PatchRef(OsType.LINUX, package=f"sudo{tag}", version="1.9.9-1ubuntu2.4")
    inventory = patch_inventory(settings)
    for ref in (openssl, curl, sudo):
        inventory.record_first_seen(PatchFacts(ref, title=f"{ref.package} fix", classification="Security",
                                               first_seen=start - timedelta(days=1)))
    tested = patch_progress_rows(tester, [result(openssl, InstallationState.INSTALLED),
                                          result(curl, InstallationState.FAILED)],
                                 start, "web-test", "run-test-1", start)
    record_batch(settings, tested, [], start)
    # The bake time has passed: the timer's evaluation makes openssl passed.
    assert evaluate(evidence_store(settings), inventory, category, openssl, now).value == "passed"
    status, request = call(host, OLGA, "POST", "/api/approvals", {
        "category": name, "patches": [openssl.key], "justification": "passed on the test ring"})
    assert status == 201, request
    status, approved = call(host, ANNA, "POST", f"/api/approvals/{request['id']}/decision",
                            {"decision": "approve", "justification": "CAB 2026-12-02"})
    assert status == 200, approved
    installed_at = datetime.now(UTC) + timedelta(seconds=1)
    production = patch_progress_rows(prod, [result(openssl, InstallationState.INSTALLED),
                                            result(sudo, InstallationState.INSTALLED)],
                                     installed_at, "web-production", "run-prod-1", installed_at)
    record_batch(settings, production, [], installed_at)
    later = installed_at + timedelta(minutes=5)
    again = patch_progress_rows(prod, [result(sudo, InstallationState.FAILED)], later, "web-production",
                                "run-prod-2", later)
    record_batch(settings, again, [], later)
    return {"category": name, "tester": tester, "prod": prod, "openssl": openssl, "curl": curl, "sudo": sudo,
            "request": request["id"], "inventory": inventory}


def test_a_machines_changes_show_the_run_the_evidence_and_the_approval_behind_each(host, scenario):
    prod, openssl, sudo = scenario["prod"], scenario["openssl"], scenario["sudo"]
    status, body = call(host, RITA, "GET", f"/api/machines/{prod.computer_name.upper()}/changes")
    assert status == 200, body
    assert body["machine"]["id"] == prod.key
    assert (body["machine"]["category"], body["machine"]["ring"]) == (scenario["category"], "production")
    assert body["nextToken"] is None
    got = [(c["key"], c["status"], c["runId"], c["deployment"], c["authorizedBy"], c["authorized"])
           for c in body["changes"]]
    # Newest first: the second run's failed sudo, then the first run's two installs (same time, by key).
    assert got[0] == (sudo.key, "failed", "run-prod-2", "web-production", "unauthorized", False)
    assert sorted(got[1:]) == sorted([
        (openssl.key, "succeeded", "run-prod-1", "web-production", scenario["request"], True),
        (sudo.key, "succeeded", "run-prod-1", "web-production", "unauthorized", False)])
    changes = {(c["key"], c["runId"]): c for c in body["changes"]}

    approved = changes[openssl.key, "run-prod-1"]
    assert (approved["version"], approved["packageName"], approved["category"], approved["ring"]) == (
        openssl.version, openssl.package, scenario["category"], "production")
    assert approved["run"] == "/api/deployment-runs/run-prod-1"
    evidence = approved["testEvidence"]
    assert (evidence["testRing"], evidence["installed"], evidence["failed"], evidence["verdict"]) == (
        "test", 1, 0, "passed")
    assert [m["computer"] for m in evidence["installedOn"]] == [scenario["tester"].computer_name]
    approval = approved["approval"]
    assert (approval["kind"], approval["requestId"], approval["link"]) == (
        "request", scenario["request"], f"/api/approvals/{scenario['request']}")
    assert (approval["requested"]["by"], approval["requested"]["justification"]) == (
        "olga@contoso.com", "passed on the test ring")
    assert (approval["approved"]["by"], approval["approved"]["justification"]) == (
        "anna@contoso.com", "CAB 2026-12-02")
    assert approval["revoked"] is None

    unauthorized = changes[sudo.key, "run-prod-1"]
    assert unauthorized["approval"] == {"kind": "unauthorized"}
    assert unauthorized["testEvidence"]["installed"] == 0 and unauthorized["testEvidence"]["verdict"] is None


def test_the_test_rings_changes_carry_its_evidence_and_a_revocation_shows_later(host, scenario):
    tester = scenario["tester"]
    status, body = call(host, RITA, "GET", f"/api/machines/{tester.key}/changes")
    assert status == 200
    changes = {c["key"]: c for c in body["changes"]}
    failed = changes[scenario["curl"].key]
    assert (failed["status"], failed["authorizedBy"], failed["approval"]) == (
        "failed", "test ring", {"kind": "test ring"})
    assert failed["testEvidence"]["verdict"] == "failed" and failed["testEvidence"]["failed"] == 1
    assert failed["testEvidence"]["failedOn"][0]["runId"] == "run-test-1"
    assert "failed on" in failed["testEvidence"]["reason"]

    status, _ = call(host, ANNA, "POST", f"/api/approvals/{scenario['request']}/decision",
                     {"decision": "revoke", "justification": "regression INC0042"})
    assert status == 200
    by_resource_id = scenario["prod"].resource_id.replace("/", "%2F")
    status, body = call(host, RITA, "GET", f"/api/machines/{by_resource_id}/changes")
    assert status == 200
    [approved] = [c for c in body["changes"] if c["key"] == scenario["openssl"].key]
    # Installed under the approval then in force; the revocation since is shown beside it.
    assert approved["approval"]["approved"]["justification"] == "CAB 2026-12-02"
    assert (approved["approval"]["revoked"]["by"], approved["approval"]["revoked"]["justification"]) == (
        "anna@contoso.com", "regression INC0042")
    now = scenario["inventory"].state(scenario["openssl"], scenario["category"])
    assert now.state is PatchState.AUTHORIZED


def test_changes_come_a_page_at_a_time_and_bad_parameters_are_named(host, scenario):
    prod = scenario["prod"]
    status, first = call(host, RITA, "GET", f"/api/machines/{prod.key}/changes?pageSize=2")
    assert status == 200 and first["count"] == 2 and first["nextToken"]
    status, second = call(host, RITA, "GET",
                          f"/api/machines/{prod.key}/changes?pageSize=2&nextToken={first['nextToken']}")
    assert status == 200 and second["count"] == 1 and second["nextToken"] is None
    status, whole = call(host, RITA, "GET", f"/api/machines/{prod.key}/changes")
    assert [c["at"] for c in first["changes"] + second["changes"]] == [c["at"] for c in whole["changes"]]
    assert [c["key"] for c in first["changes"] + second["changes"]] == [c["key"] for c in whole["changes"]]

    for query, field in [("pageSize=0", "pageSize"), ("pageSize=201", "pageSize"), ("pageSize=x", "pageSize"),
                         ("nextToken=not-a-token", "nextToken"), ("nextToken=WzFd", "nextToken")]:
        status, body = call(host, RITA, "GET", f"/api/machines/{prod.key}/changes?{query}")
        assert status == 400 and body["error"]["field"] == field, (query, body)
    status, body = call(host, RITA, "GET", "/api/machines/no-such-machine/changes")
    assert status == 404 and body["error"]["code"] == "MachineNotFound"
    no_role = encode_principal("nobody@contoso.com", [])
    assert call(host, no_role, "GET", f"/api/machines/{prod.key}/changes")[0] == 403
