"""The Azure shapes the product reads, from fixtures whose source is named beside them
(``tests/fixtures/azure``): the product's parsers read each fixture, and the ARM stand-in answers
in the same shape, so the product and its stand-in cannot agree on something Azure never sends."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.compute.models import (
    PatchInstallationDetail,
    VirtualMachineAssessPatchesResult,
    VirtualMachineInstallPatchesResult,
    VirtualMachineSoftwarePatchProperties,
)
from azure.mgmt.hybridcompute.models import (
    AvailablePatchCountByClassification,
    MachineAssessPatchesResult,
    MachineInstallPatchesResult,
)

from local.arm.fleet import parse_fleet
from local.arm.simulation import ArmError, Simulation, parse_install_request
from local.clock import VirtualClock
from shared.assessment.records import summarize, update_records
from shared.azure.patch_operations import to_install_outcome, to_outcome, to_sdk_parameters
from shared.deployments.results import MachineResultStatus, machine_result_status, run_progress_rows
from shared.model.classification import Classification
from shared.model.install_outcome import InstallRequest
from shared.model.machines import Machine, MachineKind, OsType, PowerState, parse_resource_id

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"
AT = datetime(2026, 2, 10, 3, 0, tzinfo=UTC)
SUB = "11111111-1111-4111-8111-111111111111"
# The names Windows Update gives its categories (the VirtualMachine_AssessPatches example; Windows
# Update also knows Drivers and Upgrades), and those of the Linux extension (Constants.PackageClassification).
WINDOWS_UPDATE_NAMES = {
    "Critical Updates", "Security Updates", "Definition Updates", "Update Rollups", "Feature Packs",
    "Service Packs", "Tools", "Updates", "Drivers", "Upgrades",
}
LINUX_NAMES = {"Critical", "Security", "Other", "Security-ESM", "Unclassified"}
PLACEHOLDER_ID = "Truncated_patch_list_id"
PATCH_MODEL = VirtualMachineSoftwarePatchProperties


def fixture(name: str) -> dict[str, Any]:
    body = json.loads((FIXTURES / f"{name}.json").read_text())
    assert body.pop("_source"), name
    return dict(body)


def machine(resource_id: str, os_type: OsType, os_name: str, os_version: str) -> Machine:
    ref = parse_resource_id(resource_id)
    return Machine(
        resource_id=resource_id, name=ref.name, computer_name=ref.name, kind=ref.kind,
        subscription_id=SUB, resource_group=ref.resource_group, location="westeurope", os_type=os_type,
        os_name=os_name, os_version=os_version, power_state=PowerState.RUNNING, patch_mode="Manual",
    )  # fmt: skip


WINDOWS_VM = machine(
    f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/win01",
    OsType.WINDOWS, "Windows Server 2019 Datacenter", "10.0.17763.5329",
)
UBUNTU_VM = machine(
    f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/ubu01",
    OsType.LINUX, "ubuntu", "22.04",
)
WINDOWS_ARC = machine(
    f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.HybridCompute/machines/arc01",
    OsType.WINDOWS, "Windows Server 2019 Datacenter", "10.0.17763.5329",
)


def test_every_fixture_names_its_source():
    files = sorted(FIXTURES.glob("*.json"))
    assert len(files) >= 8
    for path in files:
        source = json.loads(path.read_text()).get("_source", "")
        assert len(source) > 40, path.name
        assert path.name in (FIXTURES / "README.md").read_text(), f"{path.name} is not listed in the README"


# -- the product's parsers against the fixtures ----------------------------------------------------


def test_a_windows_assessment_is_recorded_with_the_legacy_names():
    outcome = to_outcome(VirtualMachineAssessPatchesResult(fixture("vm_assess_patches_windows")))
    classes = [p.classifications for p in (outcome.patches or ())]
    assert classes == [("Definition Updates",), ("Update Rollups",)]
    records = update_records(WINDOWS_VM, outcome, AT)
    assert {r.kb_id: r.classification for r in records} == {
        "2267602": Classification.DEFINITION, "890830": Classification.UPDATE_ROLLUPS,
    }
    # The example counts one critical-or-security update it does not list: the counts are the truth.
    summary = summarize(WINDOWS_VM, outcome, records, AT)
    assert outcome.truncated and summary.missing_total == 3 and summary.compliant is False


def test_a_windows_install_result_is_read_with_the_legacy_names():
    outcome = to_install_outcome(VirtualMachineInstallPatchesResult(fixture("vm_install_patches_windows")))
    assert (outcome.installed, outcome.pending) == (3, 2)
    assert machine_result_status(outcome) is MachineResultStatus.WINDOW_EXCEEDED
    rows = run_progress_rows(WINDOWS_VM, outcome, "nightly", "run-1", AT)
    assert {r["KBID"]: (r["Classification"], r["InstallationStatus"]) for r in rows} == {
        "2267602": ("Definition Updates", "succeeded"), "890830": ("Update Rollups", "notStarted"),
    }


def test_an_ubuntu_assessment_counts_security_esm_as_security():
    outcome = to_outcome(VirtualMachineAssessPatchesResult(fixture("vm_assess_patches_linux")))
    assert not outcome.truncated
    records = update_records(UBUNTU_VM, outcome, AT)
    assert {r.package_name: r.classification for r in records} == {
        "openssl": Classification.SECURITY, "libssl3": Classification.SECURITY,
        "imagemagick": Classification.SECURITY, "tzdata": Classification.OTHER,
        "ubuntu-advantage-tools": Classification.OTHER,
    }
    summary = summarize(UBUNTU_VM, outcome, records, AT)
    assert summary.missing_by_classification["Security Updates"] == outcome.critical_and_security_count == 3
    assert summary.compliant is False


def test_a_truncated_list_loses_its_placeholders_and_the_counts_stay_the_truth():
    outcome = to_outcome(VirtualMachineAssessPatchesResult(fixture("vm_assess_patches_linux_truncated")))
    assert outcome.truncated and outcome.error_code == "PACKAGE_LIST_TRUNCATED"
    assert [p.name for p in outcome.patches or ()] == ["openssl", "libssl3", "libc6", "sudo", "curl"]
    records = update_records(UBUNTU_VM, outcome, AT)
    summary = summarize(UBUNTU_VM, outcome, records, AT)
    assert len(records) == 5
    assert summary.missing_total == 600
    assert summary.missing_by_classification == {
        "Critical Updates": 0, "Security Updates": 7, "Other Updates": 593,
    }


def test_a_linux_install_result_drops_the_placeholder_and_reads_security_esm():
    outcome = to_install_outcome(VirtualMachineInstallPatchesResult(fixture("vm_install_patches_linux")))
    assert [p.name for p in outcome.patches or ()] == ["openssl", "imagemagick", "libssl3", "tzdata"]
    rows = run_progress_rows(UBUNTU_VM, outcome, "nightly", "run-1", AT)
    assert {r["PackageName"]: r["Classification"] for r in rows} == {
        "openssl": "Security Updates", "imagemagick": "Security Updates",
    }


def test_arc_results_are_counts_read_by_the_same_reader():
    outcome = to_outcome(MachineAssessPatchesResult(fixture("arc_assess_patches_windows")))
    assert outcome.patches is None and outcome.counts_by_classification == {"UpdateRollUp": 1, "Updates": 1}
    summary = summarize(WINDOWS_ARC, outcome, [], AT)
    assert summary.missing_by_classification["Update Rollups"] == 1
    assert summary.missing_by_classification["Updates"] == 1
    install = to_install_outcome(MachineInstallPatchesResult(fixture("arc_install_patches_windows")))
    assert (install.patches, install.installed, install.pending) == (None, 3, 2)


def test_a_request_names_the_enum_and_the_standin_refuses_anything_else():
    request = fixture("vm_install_patches_request_windows")
    ours = to_sdk_parameters(
        InstallRequest(OsType.WINDOWS, timedelta(hours=4), "IfRequired", ("Critical", "Security")),
        MachineKind.AZURE_VM,
    ).as_dict()
    assert ours["windowsParameters"]["classificationsToInclude"] == request["windowsParameters"][
        "classificationsToInclude"
    ]
    # The example's PT4H is over the PT3H55M Azure VMs accept (AZURE-FACTS): specification examples are
    # not validated requests, so the stand-in is shown the example with a duration it takes.
    within = request | {"maximumDuration": "PT3H55M"}
    assert parse_install_request(within, "Windows").classifications == {"Critical", "Security"}
    named = within | {"windowsParameters": {"classificationsToInclude": ["Security Updates"]}}
    with pytest.raises(ArmError) as refused:
        parse_install_request(named, "Windows")
    assert refused.value.status == 400
    assert refused.value.target == "windowsParameters.classificationsToInclude[0]"
    linux = {"maximumDuration": "PT2H", "rebootSetting": "Never",
             "linuxParameters": {"classificationsToInclude": ["Security-ESM"]}}  # fmt: skip
    with pytest.raises(ArmError, match="not a Linux classification"):
        parse_install_request(linux, "Linux")


# -- the stand-in's answers against the same fixtures ---------------------------------------------


def _rest_names(model: type) -> set[str]:
    """The JSON names an SDK model declares (azure-mgmt-compute / -hybridcompute model_base)."""
    model({})  # the models fill their field table on first use
    return {field._rest_name for field in model._attr_to_rest_field.values()}  # type: ignore[attr-defined]


def assert_shape(answer: dict[str, Any], like: dict[str, Any], model: type) -> None:
    """``answer`` holds no field that neither the fixture nor the SDK model knows, every field the
    fixture fills, and each with the fixture's JSON type."""
    assert set(answer) <= set(like) | _rest_names(model), set(answer) - set(like)
    for key, value in like.items():
        if value is None:
            continue
        assert key in answer, key
        assert type(answer[key]) is type(value), (key, answer[key], value)


def assert_items_shape(items: list[dict[str, Any]], like: list[dict[str, Any]], model: type) -> None:
    known = {key for item in like for key in item} | _rest_names(model)
    filled = {key for item in like if item["patchId"] != PLACEHOLDER_ID for key in item}
    assert items
    for item in items:
        assert set(item) <= known, set(item) - known
        if item["patchId"] != PLACEHOLDER_ID:
            assert filled <= set(item), filled - set(item)


def _fleet(*machines: dict[str, Any]) -> Simulation:
    fleet = parse_fleet({"subscriptions": [{"id": SUB, "name": "Test"}], "machines": list(machines)})
    return Simulation(fleet, VirtualClock())


def _vm(name: str, **extra: Any) -> dict[str, Any]:
    return {"subscription": SUB, "resourceGroup": "rg", "name": name, "kind": "azure-vm",
            "location": "westeurope"} | extra  # fmt: skip


WINDOWS_2019 = {
    "osType": "Windows", "osName": "Windows Server 2019 Datacenter", "osVersion": "10.0.17763.5329",
}
UBUNTU_2204 = {"osType": "Linux", "osName": "ubuntu", "osVersion": "22.04"}


def _finish(sim: Simulation, start: Any) -> dict[str, Any]:
    op = start()
    assert isinstance(sim.clock, VirtualClock)
    sim.clock.advance(op.end - sim.clock.now())
    body = sim.operation(op.id).status_body()
    assert body["status"] == "Succeeded", body
    return dict(body["properties"]["output"])


def test_the_standin_assesses_windows_with_windows_update_names():
    sim = _fleet(_vm("win01", availableUpdates=["KB5034768", "KB2267602", "KB890830"], **WINDOWS_2019))
    vm_id = sim.fleet.machines[0].resource_id
    answer = _finish(sim, lambda: sim.start_assessment(vm_id))
    like = fixture("vm_assess_patches_windows")
    assert_shape(answer, like, VirtualMachineAssessPatchesResult)
    assert_items_shape(answer["availablePatches"], like["availablePatches"], PATCH_MODEL)
    classes = {c for p in answer["availablePatches"] for c in p["classifications"]}
    assert classes == {"Security Updates", "Definition Updates", "Update Rollups"} <= WINDOWS_UPDATE_NAMES
    # ... and the product reads the stand-in's answer as it reads the fixture.
    outcome = to_outcome(VirtualMachineAssessPatchesResult(answer))
    assert {r.classification for r in update_records(WINDOWS_VM, outcome, AT)} == {
        Classification.SECURITY, Classification.DEFINITION, Classification.UPDATE_ROLLUPS,
    }


def test_the_standin_installs_windows_by_the_enum_and_answers_with_windows_update_names():
    sim = _fleet(_vm("win01", availableUpdates=["KB5034768", "KB2267602", "KB890830"], **WINDOWS_2019))
    vm_id = sim.fleet.machines[0].resource_id
    body = {"maximumDuration": "PT2H", "rebootSetting": "IfRequired",
            "windowsParameters": {"classificationsToInclude": ["Security", "Definition"]}}  # fmt: skip
    answer = _finish(sim, lambda: sim.start_install(vm_id, body))
    like = fixture("vm_install_patches_windows")
    assert_shape(answer, like, VirtualMachineInstallPatchesResult)
    assert_items_shape(answer["patches"], like["patches"], PatchInstallationDetail)
    states = {p["kbId"]: (p["classifications"], p["installationState"]) for p in answer["patches"]}
    assert states == {
        "5034768": (["Security Updates"], "Installed"),
        "2267602": (["Definition Updates"], "Installed"),
        "890830": (["Update Rollups"], "NotSelected"),
    }


def test_the_standin_assesses_ubuntu_with_the_extensions_names_and_counts():
    updates = ["openssl", "imagemagick", "tzdata", "ubuntu-advantage-tools"]
    sim = _fleet(_vm("ubu01", availableUpdates=updates, **UBUNTU_2204))
    answer = _finish(sim, lambda: sim.start_assessment(sim.fleet.machines[0].resource_id))
    like = fixture("vm_assess_patches_linux")
    assert_shape(answer, like, VirtualMachineAssessPatchesResult)
    assert_items_shape(answer["availablePatches"], like["availablePatches"], PATCH_MODEL)
    listed = [(p["name"], p["classifications"]) for p in answer["availablePatches"]]
    # Listed in the agent's order: Security, Security-ESM, Other, Unclassified.
    assert listed == [
        ("openssl", ["Security"]), ("imagemagick", ["Security-ESM"]),
        ("tzdata", ["Other"]), ("ubuntu-advantage-tools", ["Unclassified"]),
    ]
    assert (answer["criticalAndSecurityPatchCount"], answer["otherPatchCount"]) == (2, 2)


def _many_packages(count: int) -> list[dict[str, Any]]:
    classes = ("Security", "Other", "Security-ESM", "Unclassified")
    return [
        {"name": f"lib-generated-{n:04d}", "version": f"1.{n}.0-0ubuntu0.22.04.1",
         "classifications": [classes[n % len(classes)]], "publishedDate": "2024-02-01T00:00:00Z"}
        for n in range(count)
    ]  # fmt: skip


def test_the_standin_truncates_a_very_long_list_as_the_linux_agent_does():
    sim = _fleet(_vm("ubu01", availableUpdates=_many_packages(1200), **UBUNTU_2204))
    answer = _finish(sim, lambda: sim.start_assessment(sim.fleet.machines[0].resource_id))
    like = fixture("vm_assess_patches_linux_truncated")
    assert_shape(answer, like, VirtualMachineAssessPatchesResult)
    assert_items_shape(answer["availablePatches"], like["availablePatches"], PATCH_MODEL)
    patches = answer["availablePatches"]
    placeholders = [p for p in patches if p["patchId"] == PLACEHOLDER_ID]
    real = [p for p in patches if p["patchId"] != PLACEHOLDER_ID]
    assert 5 <= len(real) < 1200 and placeholders
    assert all(p["name"].endswith(" reported") and p["version"] == "0.0.0" for p in placeholders)
    assert "Unclassified" not in {p["classifications"][0] for p in placeholders}
    assert (answer["criticalAndSecurityPatchCount"], answer["otherPatchCount"]) == (600, 600)
    assert answer["status"] == "CompletedWithWarnings" and answer["error"]["code"] == "PACKAGE_LIST_TRUNCATED"
    # The product records what is listed and counts what the totals say.
    outcome = to_outcome(VirtualMachineAssessPatchesResult(answer))
    records = update_records(UBUNTU_VM, outcome, AT)
    assert outcome.truncated and len(records) == len(real)
    assert summarize(UBUNTU_VM, outcome, records, AT).missing_total == 1200


def test_the_standin_answers_arc_with_counts_only():
    arc = _vm("arc01", kind="arc-server", availableUpdates=["KB5034768", "KB890830"], **WINDOWS_2019)
    sim = _fleet(arc)
    arc_id = sim.fleet.machines[0].resource_id
    answer = _finish(sim, lambda: sim.start_assessment(arc_id))
    like = fixture("arc_assess_patches_windows")
    assert_shape(answer, like, MachineAssessPatchesResult)
    counts = answer["availablePatchCountByClassification"]
    assert set(counts) <= set(like["availablePatchCountByClassification"]) | _rest_names(
        AvailablePatchCountByClassification
    )
    body = {"maximumDuration": "PT2H", "rebootSetting": "IfRequired",
            "windowsParameters": {"classificationsToInclude": ["Security"]}}  # fmt: skip
    install = _finish(sim, lambda: sim.start_install(arc_id, body))
    assert_shape(install, fixture("arc_install_patches_windows"), MachineInstallPatchesResult)
