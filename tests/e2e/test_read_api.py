"""The read API over an assessed fleet, and what an install changes in it."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import LinuxParameters, VirtualMachineInstallPatchesParameters

from local.arm.fleet import load_fleet
from local.stack import DEMO_FLEET, LocalStack
from shared.azure.arm import COMPUTE_API_VERSION
from shared.azure.credentials import EmulatorCredential
from shared.model.machines import parse_resource_id

pytestmark = pytest.mark.e2e


def _get(stack, path, status=200):
    response = stack.functions.request("GET", path)
    assert response.status_code == status, response.get_body()
    return json.loads(response.get_body())


def _assess(stack, scope):
    started = stack.functions.request("POST", "/api/assessments", body=scope)
    assert started.status_code == 202, started.get_body()
    run_id = json.loads(started.get_body())["runId"]
    final = stack.durable.wait_for_completion(run_id, timeout=120)
    assert final["runtimeStatus"] == "Completed", final
    return final


@pytest.fixture(scope="module")
def stack():
    with LocalStack(load_fleet(DEMO_FLEET)).start() as running:
        running.functions.fire_timer("discover_fleet")
        discovery = [i for i in running.durable.list_instances() if i["instanceId"].startswith("discovery-")]
        running.durable.wait_for_completion(discovery[0]["instanceId"], timeout=60)
        _assess(running, {"all": True})
        yield running


def _ready_linux_machine(stack):
    machines = _get(stack, "/api/machines?os=linux&readiness=Ready&compliance=NonCompliant")["machines"]
    # an Azure VM with no injected behaviour (failing patches, throttling, ...)
    azure_vms = [
        m for m in machines if "/Microsoft.Compute/" in m["resourceId"] and "simulated" not in m["tags"]
    ]
    return sorted(azure_vms, key=lambda m: m["computerName"])[0]


def test_missing_updates_list_each_update_with_the_machines_that_need_it(stack):
    body = _get(stack, "/api/updates/missing")
    assert body["count"] > 0
    for row in body["updates"][:5]:
        machines = _get(stack, row["machines"])["machines"]
        assert len(machines) == row["machinesNeeding"]
        if row["osType"] == "Windows":
            assert row["kbId"] and row["moreInfo"].endswith(row["kbId"])
    security = _get(stack, "/api/updates/missing?classification=Security%20Updates")["updates"]
    assert security and {u["classification"] for u in security} == {"Security Updates"}
    _get(stack, "/api/updates/missing?classification=Urgent", status=400)
    _get(stack, "/api/updates/missing?os=macos", status=400)


def test_a_machine_shows_its_gaps_their_age_and_its_assessments(stack):
    machine = _ready_linux_machine(stack)
    detail = _get(stack, f"/api/machines/{machine['id']}?on={date.today().isoformat()}")
    assert detail["resourceId"] == machine["resourceId"]
    assert detail["missingUpdates"] and all(g["ageDays"] >= 0 for g in detail["missingUpdates"])
    assert len(detail["assessments"]) == 1
    assert detail["compliant"] is False
    _get(stack, "/api/machines/not-a-machine", status=404)
    _get(stack, f"/api/machines/{machine['id']}?on=yesterday", status=400)


def test_after_an_install_the_next_assessment_marks_updates_no_longer_needed(stack):
    machine = _ready_linux_machine(stack)
    before = _get(stack, f"/api/machines/{machine['id']}")
    installed = {g["update"] for g in before["missingUpdates"] if g["classification"] != "Other Updates"}
    ref = parse_resource_id(machine["resourceId"])
    compute = ComputeManagementClient(EmulatorCredential(), ref.subscription_id, base_url=stack.arm.base_url)
    compute.virtual_machines.begin_install_patches(
        ref.resource_group, ref.name,
        VirtualMachineInstallPatchesParameters(
            maximum_duration=timedelta(hours=3), reboot_setting="IfRequired",
            linux_parameters=LinuxParameters(classifications_to_include=["Critical", "Security"]),
        ),
        polling=False, api_version=COMPUTE_API_VERSION,
    )
    stack.clock.advance(timedelta(hours=4))  # the install runs its course on the shared clock
    _assess(stack, {"machineIds": [machine["resourceId"]]})

    after = _get(stack, f"/api/machines/{machine['id']}")
    still_missing = {g["update"] for g in after["missingUpdates"]}
    assert installed and not installed & still_missing
    assert len(after["assessments"]) == 2
    rows = stack.logs.query(
        f'Update_CL | where Computer == "{machine["computerName"]}" and UpdateState == "Not needed" '
        "| distinct PackageName"
    )
    assert {r["PackageName"] for r in rows} == installed
    assert datetime.now(UTC) > datetime(2026, 1, 1, tzinfo=UTC)  # the API reads real time for ages
