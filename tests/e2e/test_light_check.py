"""The light check end to end: an install through ARM, an install the product did not make (the
platform's, on an Azure VM and on an Arc server, seen only in Resource Graph) and a new machine are
reassessed, nothing else.

The timer's instance id comes from the wall-clock minute (``lightcheck-{yyyymmddThhmm}``), so two
firings in one test minute are one run, by design. The first check is fired through the timer;
later ones start ``light_check_run`` through the Durable runner with ids of their own, with the
input the timer builds, which is what a later slot would do.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import LinuxParameters, VirtualMachineInstallPatchesParameters

from local.arm.fleet import load_fleet
from local.arm.simulation import platform_install
from local.stack import DEMO_FLEET, LocalStack
from shared.assessment.baselines_table import BaselineStore, chosen_machines, record_baseline
from shared.assessment.light_check import BaselineInput, LightCheckInput, Observed, Reason
from shared.assessment.run import store_scope
from shared.assessment.updates_table import UpdateInventory
from shared.azure.arm import COMPUTE_API_VERSION
from shared.azure.credentials import EmulatorCredential
from shared.azure.tables import table_service
from shared.model.machines import machine_key, parse_resource_id
from shared.settings import load_settings

pytestmark = pytest.mark.e2e


def _get(stack, path):
    response = stack.functions.request("GET", path)
    assert response.status_code == 200, response.get_body()
    return json.loads(response.get_body())


def _plain_linux_vm(stack, kind="azure-vm", index=0):
    """A Linux machine (an Azure VM unless said) with no injected behaviour, and some critical or security
    updates missing."""
    return sorted(
        (
            m
            for m in stack.fleet.machines
            if m.kind == kind
            and m.os_type == "Linux"
            and m.power_state == "running"
            and "simulated" not in m.tags
            and m.available_updates
        ),
        key=lambda m: m.name,
    )[index]


@pytest.fixture(scope="module")
def stack():
    with LocalStack(load_fleet(DEMO_FLEET)).start() as running:
        running.functions.fire_timer("discover_fleet")
        discovery = [i for i in running.durable.list_instances() if i["instanceId"].startswith("discovery-")]
        running.durable.wait_for_completion(discovery[0]["instanceId"], timeout=60)
        started = running.functions.request("POST", "/api/assessments", body={"all": True})
        final = running.durable.wait_for_completion(json.loads(started.get_body())["runId"], timeout=120)
        assert final["runtimeStatus"] == "Completed", final
        yield running


def _light_checks(stack):
    return [
        i
        for i in stack.durable.list_instances()
        if i["instanceId"].startswith("lightcheck-") and i["name"] == "light_check_run"
    ]


def _run_check(stack, instance_id):
    check = LightCheckInput(subscription_ids=tuple(stack.fleet.subscription_ids()))
    stack.durable.start_new("light_check_run", instance_id, check.model_dump(mode="json"))
    final = stack.durable.wait_for_completion(instance_id, timeout=120)
    assert final["runtimeStatus"] == "Completed", final
    return final["output"]


def _reassessed(stack, check_id):
    """Names of the machines whose assessment the check's run started."""
    return sorted(
        i["input"]["resource_id"].rsplit("/", 1)[1]
        for i in stack.durable.list_instances()
        if i["name"] == "assess_machine" and i["instanceId"].startswith(f"{check_id}-assessment")
    )


def _gaps(resource_id):
    service = table_service(load_settings())
    return {e["RowKey"]: dict(e) for e in UpdateInventory(service).machine_updates(machine_key(resource_id))}


@pytest.fixture(scope="module")
def first_check(stack):
    stack.functions.fire_timer("light_check")
    stack.functions.fire_timer("light_check", past_due=True)  # a doubled firing of the same slot
    checks = _light_checks(stack)
    assert len(checks) == 1, [c["instanceId"] for c in checks]
    final = stack.durable.wait_for_completion(checks[0]["instanceId"], timeout=120)
    assert final["runtimeStatus"] == "Completed", final
    return checks[0]["instanceId"], final["output"]


def test_right_after_a_fleet_assessment_the_light_check_reassesses_nothing(stack, first_check):
    check_id, output = first_check
    assert output["listed"] == len(stack.fleet.machines)
    assert output["reassessed"] == 0 and output["changed"] == 0
    assert output["adopted"] > 0  # assessed machines got their first baseline without a reassessment
    assert stack.durable.get_status(f"{check_id}-assessment") is None
    status = _get(stack, f"/api/runs/{check_id}")
    assert status["status"] == "Completed"


def test_an_install_and_a_new_machine_are_picked_up_and_the_install_closes_the_gaps(stack, first_check):
    target = _plain_linux_vm(stack)
    before = _gaps(target.resource_id)
    assert before and all(g["State"] == "Needed" for g in before.values())

    ref = parse_resource_id(target.resource_id)
    compute = ComputeManagementClient(EmulatorCredential(), ref.subscription_id, base_url=stack.arm.base_url)
    compute.virtual_machines.begin_install_patches(
        ref.resource_group,
        ref.name,
        VirtualMachineInstallPatchesParameters(
            maximum_duration=timedelta(hours=3),
            reboot_setting="IfRequired",
            linux_parameters=LinuxParameters(classifications_to_include=["Critical", "Security"]),
        ),
        polling=False,
        api_version=COMPUTE_API_VERSION,
    )
    stack.clock.advance(timedelta(hours=4))  # the install runs its course on the shared clock

    # A machine that appears after the fleet assessment: a copy of the target under a new name.
    newcomer = target.model_copy(update={"name": "vm-light-new", "computer_name": "vm-light-new"})
    stack.arm.simulation.add_machine(newcomer)

    output = _run_check(stack, "lightcheck-e2e-second")
    assert output["reassessed"] == 2
    assert output["byReason"] == {Reason.INSTALL_CHANGED.value: 1, Reason.NEVER_ASSESSED.value: 1}
    assert _reassessed(stack, "lightcheck-e2e-second") == sorted([target.name, newcomer.name])
    assert output["assessment"]["assessed"] == 2 and output["baselined"] == 2
    # The machines went through Table Storage: the assessment run's input names none of them.
    run_input = stack.durable.get_status("lightcheck-e2e-second-assessment")["input"]
    assert run_input["machine_ids_stored"] is True and run_input["scope"]["machineIds"] == []
    stored = chosen_machines(load_settings(), "lightcheck-e2e-second-assessment")
    assert sorted(o.resource_id for o in stored) == sorted([target.resource_id, newcomer.resource_id])

    after = _gaps(target.resource_id)
    closed = {k for k, g in after.items() if g["State"] == "Not needed"}
    assert closed, "the installed critical and security updates are no longer needed"
    for key in closed:
        assert after[key]["FirstSeenMissing"] == before[key]["FirstSeenMissing"]
        assert after[key]["NoLongerNeededSince"] > before[key]["FirstSeenMissing"]
    assert {after[k]["Classification"] for k in closed} <= {"Critical Updates", "Security Updates"}
    detail = _get(stack, f"/api/machines/{machine_key(target.resource_id)}")
    assert len(detail["assessments"]) == 2
    assert not {g["update"] for g in detail["missingUpdates"]} & closed
    assert _get(stack, f"/api/machines/{machine_key(newcomer.resource_id)}")["lastAssessed"]

    # The baseline now holds the install the ARM stand-in reports, so the next check is quiet.
    service = table_service(load_settings())
    baseline = BaselineStore(service).read(ref.subscription_id)[machine_key(target.resource_id)]
    reported = stack.arm.simulation.machine(target.resource_id).installation_summary
    assert reported and baseline.install_id == reported["installationActivityId"]
    assert _run_check(stack, "lightcheck-e2e-third")["reassessed"] == 0


def test_the_baseline_is_written_only_for_machines_the_named_run_assessed(stack, first_check):
    target = _plain_linux_vm(stack)
    run_id = "lightcheck-never-ran-assessment"
    store_scope(load_settings(), run_id, [
        {"ResourceId": target.resource_id, "Reason": Reason.INSTALL_CHANGED.value, "InstallId": "other"}
    ])
    assert chosen_machines(load_settings(), run_id) == [
        Observed(resource_id=target.resource_id, reason=Reason.INSTALL_CHANGED, install_id="other")
    ]
    assert record_baseline(load_settings(), BaselineInput(run_id=run_id)) == 0
    service = table_service(load_settings())
    baseline = BaselineStore(service).read(parse_resource_id(target.resource_id).subscription_id)
    assert baseline[machine_key(target.resource_id)].install_id != "other"


def test_an_install_made_outside_the_product_on_a_vm_and_an_arc_server_is_seen(stack, first_check):
    vm, arc = _plain_linux_vm(stack, index=1), _plain_linux_vm(stack, kind="arc-server")
    for machine in (vm, arc):
        platform_install(stack.arm.simulation, machine.resource_id)  # no call through ARM: the platform's
    stack.clock.advance(timedelta(hours=3))

    output = _run_check(stack, "lightcheck-e2e-outside")
    assert output["byReason"] == {Reason.INSTALL_CHANGED.value: 2}
    assert _reassessed(stack, "lightcheck-e2e-outside") == sorted([vm.name, arc.name])
    assert output["assessment"]["assessed"] == 2 and output["baselined"] == 2
    # What the check saw: the runs Resource Graph keeps, started by the platform. An Arc server's ARM
    # resource carries no patch status at all.
    runs = stack.graph.store.query(
        "patchinstallationresources | where type !has 'softwarepatches' "
        "| where tostring(properties.startedBy) == 'Platform' | project id, properties"
    )
    service = table_service(load_settings())
    for machine in (vm, arc):
        baseline = BaselineStore(service).read(parse_resource_id(machine.resource_id).subscription_id)
        run = next(r for r in runs if r["id"].lower().startswith(machine.resource_id.lower() + "/"))
        seen = baseline[machine_key(machine.resource_id)]
        assert seen.install_id == run["properties"]["installationActivityId"]

    before = stack.graph.counters.queries
    quiet = _run_check(stack, "lightcheck-e2e-outside-quiet")
    assert quiet["reassessed"] == 0 and quiet["changed"] == 0
    assert stack.graph.counters.queries - before == 2  # one query per table, for the whole fleet
