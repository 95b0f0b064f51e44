"""Done-when of the assessment issue: after one assessment of the demo fleet through the local
host, the classic Update Management searches, as the seed writes them (``Update`` is the workspace
function over ``Update_CL`` that presents the legacy ``Title``), return exactly the machines and
updates the fleet file says, through the real LogsQueryClient: Azure VMs and Arc-enabled servers alike
(an Arc server's update list comes from the Resource Graph stand-in, which the ARM stand-in fills)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from azure.monitor.query import LogsQueryClient, LogsQueryResult

from local.arm.catalogue import CRITICAL_OR_SECURITY, LinuxPackage, WindowsUpdate
from local.arm.fleet import load_fleet
from local.stack import DEMO_FLEET, WORKSPACE_ID, LocalStack
from shared.azure.credentials import EmulatorCredential

pytestmark = pytest.mark.e2e

# What counts as critical or security on Linux, Security-ESM (Ubuntu Pro) included, as the agent counts it.
REQUIRED = CRITICAL_OR_SECURITY
# The fleet file's classes (the request enum, and the Linux extension's own) under the legacy Update
# table's names; every update of the demo fleet has one class.
LEGACY_NAMES = {
    "Critical": "Critical Updates", "Security": "Security Updates", "Security-ESM": "Security Updates",
    "UpdateRollUp": "Update Rollups", "FeaturePack": "Feature Packs", "ServicePack": "Service Packs",
    "Definition": "Definition Updates", "Tools": "Tools", "Updates": "Updates",
}  # fmt: skip
LINUX_OTHER = "Other Updates"  # Other and Unclassified


@pytest.fixture(scope="module")
def stack():
    with LocalStack(load_fleet(DEMO_FLEET)).start() as running:
        response = running.functions.request("POST", "/api/assessments", body={"all": True})
        run_id = json.loads(response.get_body())["runId"]
        assert running.durable.wait_for_completion(run_id, timeout=120)["runtimeStatus"] == "Completed"
        yield running


@pytest.fixture(scope="module")
def search(stack):
    assert stack.logs
    client = LogsQueryClient(EmulatorCredential(), endpoint=stack.logs.base_url + "/v1")

    def run(kql: str) -> list[dict]:
        result = client.query_workspace(WORKSPACE_ID, kql, timespan=None)
        assert isinstance(result, LogsQueryResult), result
        table = result.tables[0]
        return [dict(zip(table.columns, row, strict=True)) for row in table.rows]

    yield run
    client.close()


@pytest.fixture(scope="module")
def expected(stack):
    """What the fleet file says each assessed machine misses, Azure VMs and Arc servers alike."""
    body = json.loads(stack.functions.request("GET", "/api/machines?readiness=Ready").get_body())
    ready = {m["resourceId"].lower() for m in body["machines"]}
    missing: dict[str, list] = {}
    for machine in stack.fleet.machines:
        if machine.resource_id.lower() in ready:
            missing[machine.host_name] = machine.resolved(machine.available_updates)
    assert any(m.kind == "arc-server" and m.host_name in missing for m in stack.fleet.machines)
    return missing


def _identity(update) -> str:
    return update.kb_id if isinstance(update, WindowsUpdate) else update.name


def test_all_computers_with_missing_updates(search, expected):
    rows = search(
        'Update | where UpdateState == "Needed" and Optional == false '
        "| project Computer, Title, KBID, Classification, PublishedDate, PackageName"
    )
    got = {(r["Computer"], r["KBID"] or r["PackageName"]) for r in rows}
    want = {
        (computer, _identity(u))
        for computer, updates in expected.items()
        for u in updates
        if not (isinstance(u, WindowsUpdate) and u.optional)
    }
    assert want and got == want
    windows_only = search(
        'Update | where UpdateState == "Needed" and Optional == false and OSType != "Linux"'
    )
    assert {r["Computer"] for r in windows_only} == {
        c for c, updates in expected.items() if any(isinstance(u, WindowsUpdate) for u in updates)
    }


def test_one_computers_missing_updates(search, expected):
    computer = sorted(expected)[0]
    rows = search(
        f'Update | where UpdateState == "Needed" and Optional == false | where Computer == "{computer}" '
        "| project Computer, Title, KBID, Product, PublishedDate"
    )
    assert len(rows) == len([u for u in expected[computer] if not getattr(u, "optional", False)])


def test_distinct_missing_updates(search, expected):
    rows = search('Update | where UpdateState == "Needed" and Optional == false | distinct Title')
    want_windows = {
        u.title
        for updates in expected.values()
        for u in updates
        if isinstance(u, WindowsUpdate) and not u.optional
    }
    titles = {r["Title"] for r in rows}
    assert want_windows <= titles
    linux_names = {u.name for updates in expected.values() for u in updates if isinstance(u, LinuxPackage)}
    assert all(any(name in title for title in titles) for name in linux_names)


def test_linux_machines_with_critical_or_security_updates(search, expected):
    rows = search(
        'Update | where OSType == "Linux" '
        '| where UpdateState != "Not needed" and (Classification == "Critical Updates" '
        'or Classification == "Security Updates") | summarize AggregatedValue = count() by Computer'
    )
    want = {
        computer: sum(1 for u in updates if set(u.classifications) & REQUIRED)
        for computer, updates in expected.items()
        if any(isinstance(u, LinuxPackage) and set(u.classifications) & REQUIRED for u in updates)
    }
    assert want and {r["Computer"]: r["AggregatedValue"] for r in rows} == want


def _legacy_class(update) -> str:
    (name,) = update.classifications
    return LEGACY_NAMES.get(name, LINUX_OTHER)


def test_every_assessed_arc_server_has_its_updates_in_the_update_table(stack, search, expected):
    arc = {m.host_name for m in stack.fleet.machines if m.kind == "arc-server" and m.host_name in expected}
    rows = search('Update | where UpdateState == "Needed" | where ComputerEnvironment == "Non-Azure" '
                  "| project Computer, KBID, PackageName, Classification")
    got = {(r["Computer"], r["KBID"] or r["PackageName"], r["Classification"]) for r in rows}
    want = {(c, _identity(u), _legacy_class(u)) for c in arc for u in expected[c]}
    assert {c for c, _, _ in got} == arc and all(expected[c] for c in arc)
    assert got == want


def test_needed_updates_by_classification_over_the_latest_assessment_match_the_fleet_file(search, expected):
    rows = search(
        "Update | summarize arg_max(TimeGenerated, *) by SourceComputerId, UpdateID "
        '| where UpdateState == "Needed" and Optional == false '
        "| summarize Updates = count() by Classification"
    )
    want = Counter(
        _legacy_class(u)
        for updates in expected.values()
        for u in updates
        if not (isinstance(u, WindowsUpdate) and u.optional)
    )
    assert {r["Classification"]: r["Updates"] for r in rows} == dict(want)
