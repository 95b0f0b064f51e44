"""Install parameters from a definition, machine result rules and UpdateRunProgress_CL rows (no network)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.mgmt.compute.models import (
    VirtualMachineInstallPatchesParameters,
    VirtualMachineInstallPatchesResult,
)
from azure.mgmt.hybridcompute.models import MachineInstallPatchesParameters

from shared.azure.patch_operations import to_install_outcome
from shared.deployments.definition import DeploymentDefinition, validate_definition
from shared.deployments.install import MAX_INSTALL_DURATION, InstallParameterError, install_parameters
from shared.deployments.results import MachineResultStatus, machine_result_status, run_progress_rows
from shared.log_tables import UPDATE_RUN_PROGRESS
from shared.model.install_outcome import InstallationState, InstallOutcome, PatchInstallResult
from shared.model.machines import Machine, MachineKind, OsType, PowerState

SUB = "11111111-1111-4111-8111-111111111111"
AT = datetime(2026, 2, 10, 3, 0, tzinfo=UTC)
VM = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/app01"


def definition(os_type: OsType = OsType.LINUX, **extra: Any) -> DeploymentDefinition:
    body: dict[str, Any] = {
        "name": "rhel-critical",
        "operatingSystem": os_type.value,
        "targets": {"machines": [VM]},
        "classifications": ["Critical and security updates"] if os_type is OsType.LINUX else ["Security"],
        "schedule": {"startTime": "2026-02-01T22:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 120,
    }
    return validate_definition(body | extra)


def test_maximum_duration_is_the_time_left_capped_at_3h55m():
    short = install_parameters(definition(), OsType.LINUX, timedelta(minutes=47, seconds=30.7))
    assert short.maximum_duration == timedelta(minutes=47, seconds=30)
    long = install_parameters(definition(), OsType.LINUX, timedelta(hours=6))
    assert long.maximum_duration == MAX_INSTALL_DURATION == timedelta(hours=3, minutes=55)
    assert long.as_dict()["maximumDuration"] == "PT03H55M00S"


def test_no_time_left_is_refused():
    with pytest.raises(InstallParameterError) as caught:
        install_parameters(definition(), OsType.LINUX, timedelta(0))
    assert caught.value.field == "timeLeft"


def test_linux_parameters_carry_classifications_masks_and_run_id():
    d = definition(packagesToExclude=["redhat-release-server*"], packagesToInclude=["openssl"])
    body = install_parameters(d, OsType.LINUX, timedelta(hours=1), maintenance_run_id="run-7").as_dict()
    assert body["rebootSetting"] == "IfRequired"
    assert "windowsParameters" not in body
    assert body["linuxParameters"] == {
        "classificationsToInclude": ["Critical", "Security"],
        "packageNameMasksToInclude": ["openssl"],
        "packageNameMasksToExclude": ["redhat-release-server*"],
        "maintenanceRunId": "run-7",
    }


def test_arc_linux_parameters_have_no_maintenance_run_id():
    params = install_parameters(
        definition(), OsType.LINUX, timedelta(hours=1), kind=MachineKind.ARC_SERVER, maintenance_run_id="x"
    )
    assert isinstance(params, MachineInstallPatchesParameters)
    assert params.as_dict()["linuxParameters"] == {"classificationsToInclude": ["Critical", "Security"]}


def test_windows_optional_kbs_are_merged_into_the_exclusions_unless_named_for_inclusion():
    d = definition(OsType.WINDOWS, kbNumbersToInclude=["KB5034441"], kbNumbersToExclude=["4052623"])
    params = install_parameters(
        d, OsType.WINDOWS, timedelta(hours=2), exclude_kbs=["KB7900003", "4052623", "5034441"]
    )
    assert isinstance(params, VirtualMachineInstallPatchesParameters)
    body = params.as_dict()
    assert "linuxParameters" not in body
    assert body["windowsParameters"] == {
        "classificationsToInclude": ["Security"],
        "kbNumbersToInclude": ["5034441"],
        "kbNumbersToExclude": ["4052623", "7900003"],
    }


def test_a_malformed_optional_kb_is_refused_naming_the_argument():
    with pytest.raises(InstallParameterError, match="excludeKbs: 'KB12' is not a KB number"):
        install_parameters(
            definition(OsType.WINDOWS), OsType.WINDOWS, timedelta(hours=1), exclude_kbs=["KB12"]
        )


def test_reboot_only_is_refused_and_the_other_settings_pass_through():
    with pytest.raises(InstallParameterError) as caught:
        install_parameters(definition(rebootSetting="RebootOnly"), OsType.LINUX, timedelta(hours=1))
    assert caught.value.field == "rebootSetting"
    assert "restart-only run" in caught.value.message
    for setting in ("IfRequired", "Never", "Always"):
        params = install_parameters(definition(rebootSetting=setting), OsType.LINUX, timedelta(hours=1))
        assert params.reboot_setting == setting


def test_a_machine_of_the_other_os_is_refused():
    with pytest.raises(InstallParameterError, match="operatingSystem"):
        install_parameters(definition(OsType.LINUX), OsType.WINDOWS, timedelta(hours=1))


def test_vm_result_maps_counts_and_patches():
    result = VirtualMachineInstallPatchesResult({
        "status": "Failed", "installationActivityId": "a1", "rebootStatus": "NotNeeded",
        "maintenanceWindowExceeded": False, "installedPatchCount": 1, "failedPatchCount": 1,
        "pendingPatchCount": 0, "excludedPatchCount": 0, "notSelectedPatchCount": 0,
        "startDateTime": "2026-02-10T02:00:00Z",
        "patches": [
            {"patchId": "p1", "name": "Security Update", "kbId": "KB5034441", "classifications": ["Security"],
             "installationState": "Installed"},
            {"patchId": "p2", "name": "Other", "kbId": "5000001", "classifications": [],
             "installationState": "Failed"},
        ],
        "error": {"code": "PatchInstallationFailed", "message": "1 patch(es) failed to install."},
    })  # fmt: skip
    outcome = to_install_outcome(result)
    assert (outcome.installed, outcome.failed, outcome.error_code) == (1, 1, "PatchInstallationFailed")
    assert outcome.patches is not None
    assert [(p.kb_id, p.state) for p in outcome.patches] == [
        ("5034441", InstallationState.INSTALLED), ("5000001", InstallationState.FAILED)
    ]


def outcome(**counts: Any) -> InstallOutcome:
    values: dict[str, Any] = {
        "status": "Succeeded", "activity_id": "a", "reboot_status": "NotNeeded",
        "maintenance_window_exceeded": False, "installed": 0, "failed": 0, "pending": 0,
        "excluded": 0, "not_selected": 0, "started_at": AT,
    }  # fmt: skip
    return InstallOutcome(**(values | counts))


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"installed": 3}, MachineResultStatus.SUCCEEDED),
        ({"installed": 2, "failed": 1, "status": "Failed"}, MachineResultStatus.PARTIALLY_SUCCEEDED),
        ({"failed": 2, "status": "Failed"}, MachineResultStatus.FAILED),
        ({"installed": 2, "reboot_status": "Failed"}, MachineResultStatus.PARTIALLY_SUCCEEDED),
        ({"status": "Failed"}, MachineResultStatus.FAILED),
        ({"installed": 1, "pending": 2, "maintenance_window_exceeded": True},
         MachineResultStatus.WINDOW_EXCEEDED),
        ({"installed": 1, "failed": 1, "pending": 2, "maintenance_window_exceeded": True},
         MachineResultStatus.PARTIALLY_SUCCEEDED),
        ({"excluded": 2, "not_selected": 4}, MachineResultStatus.NOT_NEEDED),
    ],
)
def test_machine_result_status_rules(counts: dict[str, Any], expected: MachineResultStatus):
    assert machine_result_status(outcome(**counts)) == expected


def test_a_second_install_call_is_judged_with_what_the_first_installed():
    # A capped first call installed 20; the second call's own counts alone would say failed / not needed.
    partial = machine_result_status(outcome(failed=5, status="Failed"), 20)
    assert partial == MachineResultStatus.PARTIALLY_SUCCEEDED
    assert machine_result_status(outcome(), 20) == MachineResultStatus.SUCCEEDED
    assert machine_result_status(outcome(pending=1), 20) == MachineResultStatus.WINDOW_EXCEEDED


def linux_machine() -> Machine:
    rid = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/rhel01"
    return Machine(rid, "rhel01", "rhel01.corp", MachineKind.AZURE_VM, SUB, "rg", "westeurope",
                   OsType.LINUX, "redhat", "7.9", PowerState.RUNNING, "Manual")  # fmt: skip


def test_run_progress_rows_have_exactly_the_declared_columns_and_only_selected_updates():
    def patch(name: str, state: InstallationState, cls: str = "Security") -> PatchInstallResult:
        return PatchInstallResult(f"{name}_1", name, (cls,), state, version="1")

    patches = (
        patch("openssl", InstallationState.INSTALLED), patch("sudo", InstallationState.FAILED),
        patch("glibc", InstallationState.PENDING, "Critical"),
        patch("redhat-release-server", InstallationState.EXCLUDED, "Other"),
        patch("tzdata", InstallationState.NOT_SELECTED, "Other"),
    )  # fmt: skip
    done = outcome(installed=1, failed=1, pending=1, excluded=1, not_selected=1, patches=patches)
    rows = run_progress_rows(linux_machine(), done, "rhel-critical", "run-1", AT)
    assert all(set(r) == set(UPDATE_RUN_PROGRESS.column_names()) for r in rows)
    assert [(r["PackageName"], r["InstallationStatus"], r["Classification"]) for r in rows] == [
        ("openssl", "succeeded", "Security Updates"), ("sudo", "failed", "Security Updates"),
        ("glibc", "notStarted", "Critical Updates"),
    ]
    again = run_progress_rows(linux_machine(), done, "rhel-critical", "run-1", AT + timedelta(minutes=5))
    assert [r["RecordId"] for r in again] == [r["RecordId"] for r in rows]
    other_run = run_progress_rows(linux_machine(), done, "rhel-critical", "run-2", AT)
    assert not {r["RecordId"] for r in other_run} & {r["RecordId"] for r in rows}
    # The deployment's release, empty when it names none (installs by classification here).
    assert {r["Release"] for r in rows} == {""}
    released = run_progress_rows(linux_machine(), done, "rhel-critical", "run-1", AT, release="rhel-2027-01")
    assert {r["Release"] for r in released} == {"rhel-2027-01"}
    assert [r["RecordId"] for r in released] == [r["RecordId"] for r in rows]


def test_arc_outcomes_have_no_per_update_rows():
    assert run_progress_rows(linux_machine(), outcome(installed=3, patches=None), "d", "r", AT) == []
