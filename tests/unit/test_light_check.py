"""The light check's rules (pure) and its orchestrator, driven through replay with stand-in activities."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
from shared.assessment.baselines_table import patch_activity
from shared.assessment.light_check import (
    AssessmentRecord,
    Baseline,
    ChangedMachines,
    LightCheckInput,
    Observed,
    PatchActivity,
    Reason,
    Verdict,
    decide,
    select,
)
from shared.azure.arm import vm_to_machine
from shared.model.machines import (
    Machine,
    MachineKind,
    OsType,
    PowerState,
    machine_from_json,
    machine_key,
    machine_to_json,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"
SUB = "00000000-0000-0000-0000-000000000001"
SUB2 = "00000000-0000-0000-0000-000000000002"
ASSESSED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INSTALL_ID = "5c7b2a8e-0000-4000-8000-000000000001"


def vm(
    name: str = "vm-a",
    *,
    power: PowerState = PowerState.RUNNING,
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
    )


def installed(
    install_id: str = INSTALL_ID, at: datetime | None = None, status: str = "Succeeded"
) -> PatchActivity:
    """What Resource Graph shows of a machine whose last installation is ``install_id``."""
    return PatchActivity(install_id=install_id, install_at=at, install_status=status)


def assessed(started: datetime, status: str = "Succeeded") -> PatchActivity:
    """What Resource Graph shows of a machine whose last assessment (by anyone) started at ``started``."""
    return PatchActivity(assessment_started_at=started, assessment_status=status)


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
    assert decide(vm(), seen, ASSESSED_RECORD, installed(at=later)) == Verdict(Reason.INSTALL_CHANGED)
    same = Baseline(INSTALL_ID, later.isoformat())
    assert decide(vm(), same, ASSESSED_RECORD, installed(at=later)) == Verdict()
    # The same activity id with a later modification (an install re-reported) is a change too.
    assert decide(vm(), same, ASSESSED_RECORD, installed(at=later + timedelta(minutes=5))) == (
        Verdict(Reason.INSTALL_CHANGED)
    )


def test_an_install_by_anyone_on_a_vm_or_an_arc_server_is_a_change():
    later = ASSESSED + timedelta(hours=2)
    for kind in MachineKind:
        assert decide(vm(kind=kind), Baseline("", ""), ASSESSED_RECORD, installed(at=later)) == Verdict(
            Reason.INSTALL_CHANGED
        )


def test_a_baseline_written_from_the_instance_view_is_compared_by_moment_not_by_text():
    later = datetime(2026, 3, 1, 14, 0, 0, 120000, tzinfo=UTC)
    written_then = Baseline(INSTALL_ID, "2026-03-01T14:00:00.120000+00:00")
    assert decide(vm(), written_then, ASSESSED_RECORD, installed(at=later)) == Verdict()


def test_an_installation_resource_graph_no_longer_shows_is_no_change():
    # Older than the look-back, or than its 30 days of history: the baseline stays as it is.
    kept = Baseline(INSTALL_ID, (ASSESSED - timedelta(days=3)).isoformat())
    assert decide(vm(), kept, ASSESSED_RECORD, PatchActivity()) == Verdict()


def test_an_install_still_running_is_picked_up_when_it_ends():
    running = installed(at=ASSESSED + timedelta(hours=1), status="InProgress")
    assert decide(vm(), Baseline("", ""), ASSESSED_RECORD, running) == Verdict()
    assert decide(vm(), Baseline("", ""), ASSESSED_RECORD, installed(status="NotStarted")) == Verdict()


def test_without_a_baseline_the_install_time_is_compared_with_the_last_assessment():
    before = installed(at=ASSESSED - timedelta(days=1))
    after = installed(at=ASSESSED + timedelta(minutes=1))
    assert decide(vm(), None, ASSESSED_RECORD, before) == Verdict(adopt=True)
    assert decide(vm(), None, ASSESSED_RECORD, PatchActivity()) == Verdict(adopt=True)
    assert decide(vm(), None, ASSESSED_RECORD, after) == Verdict(Reason.INSTALL_CHANGED)


def test_an_assessment_made_elsewhere_after_the_products_is_a_change_and_its_own_is_not():
    seen = Baseline("", "")
    elsewhere = assessed(ASSESSED + timedelta(hours=3))
    assert decide(vm(), seen, ASSESSED_RECORD, elsewhere) == Verdict(Reason.ASSESSED_ELSEWHERE)
    assert decide(vm(kind=MachineKind.ARC_SERVER), None, ASSESSED_RECORD, elsewhere) == Verdict(
        Reason.ASSESSED_ELSEWHERE
    )
    # The product's own assessment started before the product saw it end (what Machines keeps),
    # however late Resource Graph marks its end.
    assert decide(vm(), seen, ASSESSED_RECORD, assessed(ASSESSED - timedelta(minutes=2))) == Verdict()
    assert decide(vm(), None, ASSESSED_RECORD, assessed(ASSESSED)) == Verdict(adopt=True)
    # A failed assessment lists no updates: nothing to learn from reassessing.
    failed = assessed(ASSESSED + timedelta(hours=3), status="Failed")
    assert decide(vm(), seen, ASSESSED_RECORD, failed) == Verdict()


def test_when_resource_graph_could_not_be_read_only_the_listings_rules_apply():
    was_off = AssessmentRecord(last_assessed=ASSESSED, readiness="NotAssessable", failed_at=ASSESSED)
    assert decide(vm(), None, None, None) == Verdict(Reason.NEVER_ASSESSED)
    assert decide(vm(), Baseline("", ""), was_off, None) == Verdict(Reason.STARTED)
    assert decide(vm(), None, ASSESSED_RECORD, None) == Verdict()  # nothing adopted blind
    assert decide(vm(), Baseline("", ""), ASSESSED_RECORD, None) == Verdict()


def test_selection_is_ordered_capped_and_carries_the_install_seen():
    machines = [vm(f"vm-{i:02d}") for i in range(5)]
    activity = {m.key: installed(f"id-{i}", ASSESSED + timedelta(hours=1)) for i, m in enumerate(machines)}
    machines.append(vm("vm-new"))
    machines.append(vm("vm-same"))
    records = {m.key: ASSESSED_RECORD for m in machines if m.name != "vm-new"}
    baselines = {m.key: Baseline("", "") for m in machines if m.name != "vm-same"}
    chosen, adopt, changed = select(machines, baselines, records, activity, limit=3)
    assert changed == 6
    assert [o.resource_id.rsplit("/", 1)[1] for o in chosen] == ["vm-new", "vm-00", "vm-01"]
    assert chosen[0].reason is Reason.NEVER_ASSESSED and chosen[1].reason is Reason.INSTALL_CHANGED
    assert (chosen[1].install_id, chosen[1].install_at) == (
        "id-0",
        (ASSESSED + timedelta(hours=1)).isoformat(),
    )
    assert [m.name for m in adopt] == ["vm-same"]
    # Without Resource Graph's answer: the new machine only, nothing adopted.
    chosen, adopt, changed = select(machines, baselines, records, None)
    assert ([o.reason for o in chosen], adopt, changed) == ([Reason.NEVER_ASSESSED], [], 1)


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


def test_the_vm_listing_is_not_read_for_installations():
    # Nothing documents that the statusOnly listing carries patchStatus (issue 10): whatever it says
    # of the last installation, the machine is the same; installations come from Resource Graph.
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
    assert vm_to_machine(model, view) == vm_to_machine(model, VirtualMachineInstanceView())
    # A machine's JSON written before (by a run still going) still reads.
    old = json.loads(machine_to_json(vm()))
    old |= {"last_install_id": INSTALL_ID, "last_install_status": "Succeeded", "last_install_at": ""}
    assert machine_from_json(json.dumps(old)) == vm()


class FakeGraph:
    """Answers each query with the fixture rows of the table it names."""

    def __init__(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        self.tables = tables
        self.calls: list[str] = []

    def rows(self, kql: str, subscriptions: Any) -> Any:
        self.calls.append(kql)
        return iter(self.tables[kql.split(" ", 1)[0]])


def _fixture(name: str) -> list[dict[str, Any]]:
    return list(json.loads((FIXTURES / f"{name}.json").read_text())["data"])


def test_resource_graphs_rows_become_each_machines_activity_by_machine_key():
    graph = FakeGraph({
        "patchassessmentresources": _fixture("resource_graph_patch_assessment"),
        "patchinstallationresources": _fixture("resource_graph_patch_installation"),
    })  # fmt: skip
    since = datetime(2026, 2, 10, tzinfo=UTC)
    found = patch_activity(graph, ["11111111-1111-4111-8111-111111111111"], since)  # type: ignore[arg-type]
    win = machine_key("/subscriptions/11111111-1111-4111-8111-111111111111/resourceGroups/rg-app/providers/"
                      "Microsoft.Compute/virtualMachines/win-01")  # fmt: skip
    assert found[win] == PatchActivity(
        install_id="6f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0",
        install_at=datetime(2026, 2, 11, 3, 41, 12, 523000, tzinfo=UTC),
        install_status="Failed",
        assessment_started_at=datetime(2026, 2, 10, 2, 0, 4, 255615, tzinfo=UTC),
        assessment_status="Succeeded",
    )
    assert len(found) == 2  # the Arc server of the fixtures too
    # Two queries for the fleet, each asking only for what changed in the look-back.
    assert len(graph.calls) == 2 and all("datetime(2026-02-10T00:00:00" in kql for kql in graph.calls)


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
    # The check's time, from the orchestration's clock: Resource Graph is read back from it.
    assert datetime.fromisoformat(SEEN["find"]["at"]) == runner.clock.now()


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
