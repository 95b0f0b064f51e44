"""Done-when of the assessment issue: after one assessment of the demo fleet through the local
host, the classic Update Management searches, as the seed writes them (``Update`` is the workspace
function over ``Update_CL`` that presents the legacy ``Title``), return exactly the machines and
updates the fleet file says, through the real LogsQueryClient."""

from __future__ import annotations

import json

import pytest
from azure.monitor.query import LogsQueryClient, LogsQueryResult

from local.arm.catalogue import CRITICAL_OR_SECURITY, LinuxPackage, WindowsUpdate
from local.arm.fleet import load_fleet
from local.stack import DEMO_FLEET, WORKSPACE_ID, LocalStack
from shared.azure.credentials import EmulatorCredential

pytestmark = pytest.mark.e2e

# What counts as critical or security on Linux, Security-ESM (Ubuntu Pro) included, as the agent counts it.
REQUIRED = CRITICAL_OR_SECURITY


@pytest.fixture(scope="module")
def stack():
    with LocalStack(load_fleet(DEMO_FLEET)).start() as running:
        response = running.functions.request("POST", "/api/assessments", body={})
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
    """What the fleet file says each assessed machine misses: Azure VMs that were assessed
    (Arc results carry counts only, so Arc machines have no per-update rows by design)."""
    body = json.loads(stack.functions.request("GET", "/api/machines?readiness=Ready").get_body())
    ready = {m["resourceId"].lower() for m in body["machines"]}
    missing: dict[str, list] = {}
    for machine in stack.fleet.machines:
        if machine.kind == "azure-vm" and machine.resource_id.lower() in ready:
            missing[machine.host_name] = machine.resolved(machine.available_updates)
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
