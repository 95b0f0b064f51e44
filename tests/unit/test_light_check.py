"""The light check's rules (pure) and its orchestrator, driven through replay with stand-in activities."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.durable_functions as df
import pytest
from azure.mgmt.compute.models import (
    LastPatchInstallationSummary,
    OSDisk,
    StorageProfile,
    VirtualMachine,
    VirtualMachineInstanceView,
    VirtualMachinePatchStatus,
)

from functions import light_check as functions_light_check
from local.clock import VirtualClock
from local.durable import DurableRunner
from shared.assessment.light_check import (
    AssessmentRecord,
    Baseline,
    ChangedMachines,
    LightCheckInput,
    Observed,
    Reason,
    Verdict,
    decide,
    select,
)
from shared.azure.arm import vm_to_machine
from shared.model.machines import Machine, MachineKind, OsType, PowerState

SUB = "00000000-0000-0000-0000-000000000001"
SUB2 = "00000000-0000-0000-0000-000000000002"
ASSESSED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INSTALL_ID = "5c7b2a8e-0000-4000-8000-000000000001"


def vm(
    name: str = "vm-a",
    *,
    power: PowerState = PowerState.RUNNING,
    install_id: str = "",
    install_at: datetime | None = None,
    install_status: str = "",
    os_name: str = "Ubuntu",
    kind: MachineKind = MachineKind.AZURE_VM,
) -> Machine:
    provider = (
        "Microsoft.Compute/virtualMachines"
        if kind is MachineKind.AZURE_VM
        else "Microsoft.HybridCompute/machines"
    )
    return Machine(
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/{provider}/{name}",
        name,
        name,
        kind,
        SUB,
        "rg",
        "westeurope",
        OsType.LINUX if os_name == "Ubuntu" else OsType.WINDOWS,
        os_name,
        "22.04",
        power,
        "ImageDefault",
        last_install_id=install_id,
        last_install_status=install_status,
        last_install_at=install_at.isoformat() if install_at else "",
    )


ASSESSED_RECORD = AssessmentRecord(last_assessed=ASSESSED, readiness="Ready")


# --- the rules ----------------------------------------------------------------------------------------


def test_a_machine_never_assessed_is_reassessed_whether_or_not_discovery_has_seen_it():
    assert decide(vm(), None, None) == Verdict(Reason.NEVER_ASSESSED)
    assert decide(vm(), None, AssessmentRecord(last_assessed=None)) == Verdict(Reason.NEVER_ASSESSED)
    # Arc servers carry no install summary: "never assessed" is what applies to them.
    assert decide(vm(kind=MachineKind.ARC_SERVER), None, None) == Verdict(Reason.NEVER_ASSESSED)


def test_a_never_assessed_machine_whose_attempt_failed_waits_for_the_scheduled_run():
    failed = AssessmentRecord(last_assessed=None, readiness="Failed", failed_at=ASSESSED)
    assert decide(vm(), None, failed) == Verdict()


def test_machines_that_cannot_be_assessed_now_are_left_alone():
    assert decide(vm(power=PowerState.DEALLOCATED), None, None) == Verdict()
    assert decide(vm(kind=MachineKind.ARC_SERVER, power=PowerState.DISCONNECTED), None, None) == Verdict()
    assert decide(vm(os_name="Windows 10 Enterprise"), None, None) == Verdict()


def test_a_machine_recorded_as_off_that_runs_again_is_reassessed():
    was_off = AssessmentRecord(last_assessed=ASSESSED, readiness="NotAssessable", failed_at=ASSESSED)
    assert decide(vm(), Baseline("", ""), was_off) == Verdict(Reason.STARTED)


def test_a_changed_installation_is_reassessed_and_an_unchanged_one_is_not():
    later = ASSESSED + timedelta(hours=2)
    seen = Baseline("", "")
    assert decide(vm(install_id=INSTALL_ID, install_at=later), seen, ASSESSED_RECORD) == Verdict(
        Reason.INSTALL_CHANGED
    )
    same = Baseline(INSTALL_ID, later.isoformat())
    assert decide(vm(install_id=INSTALL_ID, install_at=later), same, ASSESSED_RECORD) == Verdict()
    # The same activity id with a later modification (an install re-reported) is a change too.
    assert decide(
        vm(install_id=INSTALL_ID, install_at=later + timedelta(minutes=5)), same, ASSESSED_RECORD
    ) == (Verdict(Reason.INSTALL_CHANGED))


def test_an_install_still_running_is_picked_up_when_it_ends():
    running = vm(install_id=INSTALL_ID, install_at=ASSESSED + timedelta(hours=1), install_status="InProgress")
    assert decide(running, Baseline("", ""), ASSESSED_RECORD) == Verdict()


def test_without_a_baseline_the_install_time_is_compared_with_the_last_assessment():
    before = vm(install_id=INSTALL_ID, install_at=ASSESSED - timedelta(days=1))
    after = vm(install_id=INSTALL_ID, install_at=ASSESSED + timedelta(minutes=1))
    assert decide(before, None, ASSESSED_RECORD) == Verdict(adopt=True)
    assert decide(vm(), None, ASSESSED_RECORD) == Verdict(adopt=True)
    assert decide(after, None, ASSESSED_RECORD) == Verdict(Reason.INSTALL_CHANGED)


def test_selection_is_ordered_capped_and_carries_the_install_seen():
    machines = [
        vm(f"vm-{i:02d}", install_id=f"id-{i}", install_at=ASSESSED + timedelta(hours=1)) for i in range(5)
    ]
    machines.append(vm("vm-new"))
    machines.append(vm("vm-same"))
    records = {m.key: ASSESSED_RECORD for m in machines if m.name != "vm-new"}
    baselines = {m.key: Baseline("", "") for m in machines if m.name != "vm-same"}
    chosen, adopt, changed = select(machines, baselines, records, limit=3)
    assert changed == 6
    assert [o.resource_id.rsplit("/", 1)[1] for o in chosen] == ["vm-new", "vm-00", "vm-01"]
    assert chosen[0].reason is Reason.NEVER_ASSESSED and chosen[1].reason is Reason.INSTALL_CHANGED
    assert (chosen[1].install_id, chosen[1].install_at) == (
        "id-0",
        (ASSESSED + timedelta(hours=1)).isoformat(),
    )
    assert [m.name for m in adopt] == ["vm-same"]


def test_the_answer_of_find_changed_machines_carries_counts_not_machines():
    chosen = [
        Observed(resource_id=vm("vm-a").resource_id, reason=Reason.NEVER_ASSESSED),
        Observed(resource_id=vm("vm-b").resource_id.replace(SUB, SUB2), reason=Reason.INSTALL_CHANGED),
        Observed(resource_id=vm("vm-c").resource_id, reason=Reason.NEVER_ASSESSED),
    ]
    answer = ChangedMachines.of(chosen, listed=9, changed=4, adopted=1, subscriptions_failed=[SUB2])
    assert answer.reassess == 3 and answer.subscription_ids == (SUB, SUB2)
    assert answer.by_reason == {Reason.NEVER_ASSESSED.value: 2, Reason.INSTALL_CHANGED.value: 1}
    assert (answer.listed, answer.changed, answer.adopted, answer.subscriptions_failed) == (9, 4, 1, (SUB2,))
    assert "vm-a" not in answer.model_dump_json()


def test_the_vm_listing_exposes_the_last_installation_summary():
    model = VirtualMachine(
        location="westeurope",
        storage_profile=StorageProfile(os_disk=OSDisk(os_type="Linux", create_option="FromImage")),
    )
    model.id = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-a"
    model.name = "vm-a"
    view = VirtualMachineInstanceView(patch_status=VirtualMachinePatchStatus())
    summary = LastPatchInstallationSummary()
    summary.installation_activity_id, summary.status = INSTALL_ID, "Succeeded"
    summary.last_modified_time = ASSESSED
    view.patch_status.last_patch_installation_summary = summary
    machine = vm_to_machine(model, view)
    assert (machine.last_install_id, machine.last_install_status) == (INSTALL_ID, "Succeeded")
    assert datetime.fromisoformat(machine.last_install_at) == ASSESSED
    untouched = vm_to_machine(model, VirtualMachineInstanceView())
    assert (untouched.last_install_id, untouched.last_install_at) == ("", "")


# --- the orchestrator ------------------------------------------------------------------------------------

app = df.DFApp()
app.orchestration_trigger(context_name="context")(functions_light_check.light_check_run)
STEER: dict[str, Any] = {}
SEEN: dict[str, Any] = {}
STORED: dict[str, list[Observed]] = {}  # stands for the assessment run's stored scope (AssessmentTargets)


@app.activity_trigger(input_name="request")
def find_changed_machines(request: dict[str, Any]) -> dict[str, Any]:
    SEEN["find"] = request
    chosen = list(STEER["chosen"])
    STORED[request["run_id"]] = chosen
    return ChangedMachines.of(chosen, listed=7, changed=len(chosen), adopted=0).model_dump(mode="json")


@app.orchestration_trigger(context_name="context")
def assessment_run(context: df.DurableOrchestrationContext) -> Any:
    SEEN["assessment"] = (context.instance_id, context.get_input())
    if STEER.get("assessment_fails"):
        raise RuntimeError("listing failed")
    return {"assessed": len(STORED[context.instance_id])}
    yield  # a generator, as orchestrators are


@app.activity_trigger(input_name="request")
def record_light_check_baseline(request: dict[str, Any]) -> int:
    SEEN["baseline"] = request
    return len(STORED[request["run_id"]])


@pytest.fixture
def runner():
    STEER.clear()
    SEEN.clear()
    STORED.clear()
    with DurableRunner(app, VirtualClock(), activity_concurrency=2) as running:
        yield running


def _check(runner, instance_id: str = "lightcheck-20260301T1215") -> dict[str, Any]:
    runner.start_new(
        "light_check_run", instance_id, LightCheckInput(subscription_ids=(SUB,)).model_dump(mode="json")
    )
    return runner.wait_for_completion(instance_id, timeout=30)


def test_with_nothing_changed_no_assessment_is_started(runner):
    STEER["chosen"] = []
    final = _check(runner)
    assert final["runtimeStatus"] == "Completed"
    assert final["output"]["reassessed"] == 0 and final["output"]["listed"] == 7
    assert "assessment" not in SEEN and "baseline" not in SEEN
    assert SEEN["find"]["check_id"] == "lightcheck-20260301T1215"
    assert SEEN["find"]["run_id"] == "lightcheck-20260301T1215-assessment"


def test_changed_machines_are_assessed_through_storage_and_baselined_against_that_run(runner):
    chosen = [
        Observed(resource_id=vm("vm-b").resource_id, reason=Reason.INSTALL_CHANGED, install_id=INSTALL_ID),
        Observed(resource_id=vm("vm-c").resource_id, reason=Reason.NEVER_ASSESSED),
    ]
    STEER["chosen"] = chosen
    final = _check(runner)
    assert final["runtimeStatus"] == "Completed"
    child_id, child_input = SEEN["assessment"]
    assert child_id == "lightcheck-20260301T1215-assessment"
    assert child_input["trigger"] == "light-check"
    # The machines went to storage under the run's id; the run's input names none of them.
    assert STORED[child_id] == chosen
    assert child_input["machine_ids_stored"] is True and child_input["scope"]["machineIds"] == []
    assert child_input["subscription_ids"] == [SUB]
    assert SEEN["baseline"] == {"run_id": child_id}
    assert final["output"]["assessment"] == {"assessed": 2} and final["output"]["baselined"] == 2
    assert final["output"]["byReason"] == {"installChanged": 1, "neverAssessed": 1}


@pytest.mark.parametrize("changed", [2, 5000])
def test_the_checks_messages_stay_small_however_many_machines_changed(runner, changed):
    STEER["chosen"] = [
        Observed(resource_id=vm(f"vm-{n:05d}").resource_id, reason=Reason.NEVER_ASSESSED,
                 install_id=INSTALL_ID, install_at=ASSESSED.isoformat())
        for n in range(changed)
    ]
    final = _check(runner)
    assert final["output"]["reassessed"] == changed and final["output"]["baselined"] == changed
    payloads = [
        text
        for instance_id in ("lightcheck-20260301T1215", "lightcheck-20260301T1215-assessment")
        for event in runner.get_status(instance_id, show_history=True)["historyEvents"]
        for text in (event.get("Input"), event.get("Result"))
        if text
    ]
    assert payloads and max(len(text) for text in payloads) < 1000
    assert len(json.dumps(final["customStatus"])) < 1000


def test_a_failed_assessment_run_still_lets_the_assessed_machines_be_baselined(runner):
    STEER["chosen"] = [Observed(resource_id=vm("vm-b").resource_id, reason=Reason.NEVER_ASSESSED)]
    STEER["assessment_fails"] = True
    final = _check(runner)
    assert final["runtimeStatus"] == "Completed"
    assert "listing failed" in final["output"]["assessmentError"]
    # record_light_check_baseline checks each machine's LastAssessmentRun, so none is baselined wrongly.
    assert SEEN["baseline"]["run_id"] == "lightcheck-20260301T1215-assessment"
