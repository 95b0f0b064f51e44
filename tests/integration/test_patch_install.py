"""Installing and restarting through ``PatchOperations`` (real azure-mgmt clients, HTTPS) on the ARM
stand-in, and the ``UpdateRunProgress_CL`` rows answering the seed's two run searches (through the
``UpdateRunProgress`` workspace function, as the seed writes them) in the Log Analytics stand-in.

The ARM stand-in runs with ``auto_advance=True`` on a virtual clock: checking an unfinished
install moves the clock to its end, so hours of simulated patching take milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from local.arm.fleet import Fleet, parse_fleet
from local.arm.server import ArmStandIn
from local.clock import VirtualClock
from local.loganalytics import LogAnalyticsStandIn
from local.tls import LocalTls, ensure_local_tls
from shared.azure.credentials import EmulatorCredential
from shared.azure.log_ingestion import LogSink
from shared.azure.patch_operations import PatchOperations, PermanentArmError
from shared.deployments.definition import DeploymentDefinition, validate_definition
from shared.deployments.install import install_request
from shared.deployments.results import MachineResultStatus, machine_result_status, run_progress_rows
from shared.log_tables import UPDATE_RUN_PROGRESS
from shared.model.assessment_outcome import AssessmentOutcome
from shared.model.install_outcome import InstallationState, InstallOutcome
from shared.model.machines import Machine, MachineKind, OsType, PowerState

SUB = "22222222-2222-4222-8222-222222222222"
WORKSPACE, DCR = "ws-install", "dcr-install"
NOW = datetime(2026, 2, 10, 2, 0, tzinfo=UTC)
RHEL = ["kernel", "openssl", "glibc", "redhat-release-server", "tzdata"]
UBUNTU = ["openssl", "sudo", "libc6", "tzdata"]
MAX_CHECKS = 10


def _vm(name: str, os_name: str, version: str, updates: list[str], **extra: Any) -> dict[str, Any]:
    return {"subscription": SUB, "resourceGroup": "rg-app", "name": name, "kind": "azure-vm",
            "osType": "Linux", "osName": os_name, "osVersion": version, "location": "westeurope",
            "availableUpdates": updates} | extra  # fmt: skip


def _fleet() -> Fleet:
    machines = [
        _vm("rhel-01", "redhat", "7.9", RHEL),
        _vm("slow-01", "ubuntu", "22.04", UBUNTU, behaviours={"installSecondsPerPatch": 1800}),
        _vm("broken-01", "ubuntu", "22.04", UBUNTU, behaviours={"failingPatches": ["sudo"]}),
        _vm("lost-01", "ubuntu", "22.04", UBUNTU, behaviours={"unreachable": True}),
        _vm("pending-01", "ubuntu", "22.04", UBUNTU, behaviours={"rebootPending": True}),
        _vm("off-01", "ubuntu", "22.04", UBUNTU, powerState="deallocated"),
    ]
    return parse_fleet({"subscriptions": [{"id": SUB}], "machines": machines})


def machine(name: str, os_name: str = "ubuntu") -> Machine:
    rid = f"/subscriptions/{SUB}/resourceGroups/rg-app/providers/Microsoft.Compute/virtualMachines/{name}"
    return Machine(rid, name, name, MachineKind.AZURE_VM, SUB, "rg-app", "westeurope", OsType.LINUX,
                   os_name, "1", PowerState.RUNNING, "Manual")  # fmt: skip


def definition(**extra: Any) -> DeploymentDefinition:
    return validate_definition({
        "name": "rhel-critical", "operatingSystem": "Linux",
        "targets": {"machines": [machine("rhel-01").resource_id]},
        "classifications": ["Critical and security updates"],
        "packagesToExclude": ["redhat-release-server*"],
        "schedule": {"startTime": "2026-02-10T02:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 120, "rebootSetting": "Never",
    } | extra)  # fmt: skip


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> LocalTls:
    return ensure_local_tls(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def operations(tls: LocalTls, monkeypatch: pytest.MonkeyPatch) -> Iterator[PatchOperations]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))  # as the local host does for the app
    with ArmStandIn(_fleet(), VirtualClock(NOW), tls, auto_advance=True) as arm:
        yield PatchOperations(EmulatorCredential(), arm.base_url, SUB)


@pytest.fixture
def loganalytics(tls: LocalTls) -> Iterator[LogAnalyticsStandIn]:
    with LogAnalyticsStandIn(
        None, tls, workspace_id=WORKSPACE, dcr_immutable_id=DCR, clock=VirtualClock(NOW + timedelta(hours=1))
    ) as running:
        yield running


def install(ops: PatchOperations, name: str, time_left: timedelta = timedelta(hours=2)) -> InstallOutcome:
    """Start, then check once per call as the orchestration will (with durable timers between)."""
    rid = machine(name).resource_id
    token = ops.start_install(rid, install_request(definition(), OsType.LINUX, time_left))
    for _ in range(MAX_CHECKS):
        outcome = ops.check_install(rid, token)
        if outcome is not None:
            return outcome
    raise AssertionError(f"install on {name} did not finish after {MAX_CHECKS} checks")


def states(outcome: InstallOutcome) -> dict[str, InstallationState]:
    assert outcome.patches is not None
    return {p.name: p.state for p in outcome.patches}


def test_rhel_install_takes_critical_and_security_and_leaves_the_release_package(operations):
    outcome = install(operations, "rhel-01")
    assert states(outcome) == {
        "kernel": InstallationState.INSTALLED, "openssl": InstallationState.INSTALLED,
        "glibc": InstallationState.INSTALLED, "redhat-release-server": InstallationState.EXCLUDED,
        "tzdata": InstallationState.NOT_SELECTED,
    }  # fmt: skip
    assert (outcome.installed, outcome.excluded, outcome.not_selected) == (3, 1, 1)
    assert machine_result_status(outcome) == MachineResultStatus.SUCCEEDED
    after = _assess(operations, "rhel-01")
    assert after == {"redhat-release-server", "tzdata"}  # the next assessment agrees


def _assess(ops: PatchOperations, name: str) -> set[str]:
    outcome = _assessment(ops, name)
    assert outcome.patches is not None
    return {p.name for p in outcome.patches}


def _assessment(ops: PatchOperations, name: str) -> AssessmentOutcome:
    rid = machine(name).resource_id
    token = ops.start_assessment(rid)
    for _ in range(MAX_CHECKS):
        outcome = ops.check_assessment(rid, token)
        if outcome is not None:
            return outcome
    raise AssertionError("assessment did not finish")


def test_a_window_too_short_leaves_the_rest_pending(operations):
    outcome = install(operations, "slow-01", time_left=timedelta(minutes=45))  # 30 minutes per patch
    assert outcome.maintenance_window_exceeded
    assert (outcome.installed, outcome.pending) == (1, 2)  # openssl in; sudo and libc6 wait
    assert machine_result_status(outcome) == MachineResultStatus.WINDOW_EXCEEDED


def test_a_failing_patch_makes_the_machine_partially_succeeded(operations):
    outcome = install(operations, "broken-01")
    assert states(outcome)["sudo"] is InstallationState.FAILED
    assert states(outcome)["openssl"] is InstallationState.INSTALLED
    assert outcome.error_code == "PatchInstallationFailed"
    assert machine_result_status(outcome) == MachineResultStatus.PARTIALLY_SUCCEEDED


def test_an_unreachable_machine_is_a_permanent_error(operations):
    with pytest.raises(PermanentArmError) as caught:
        install(operations, "lost-01")
    assert caught.value.failure.code == "VMAgentStatusCommunicationError"
    assert "VM agent" in caught.value.failure.hint


def test_a_restart_is_started_then_checked_until_done_and_clears_the_pending_reboot(operations):
    assert _assessment(operations, "pending-01").reboot_pending
    rid = machine("pending-01").resource_id
    token = operations.start_restart(rid)
    # The first check finds it running (the stand-in then moves its clock to the end); the next, done.
    assert [operations.check_restart(rid, token) for _ in range(2)] == [False, True]
    assert operations.check_restart(rid, token)  # checking again after the end still says done
    assert not _assessment(operations, "pending-01").reboot_pending


def test_a_restart_needs_a_running_vm_but_not_its_agent(operations):
    with pytest.raises(PermanentArmError) as caught:
        operations.start_restart(machine("off-01").resource_id)
    assert caught.value.failure.code == "OperationNotAllowed"
    rid = machine("lost-01").resource_id
    token = operations.start_restart(rid)
    assert any(operations.check_restart(rid, token) for _ in range(MAX_CHECKS))


def test_an_arc_server_cannot_be_restarted(operations):
    arc = f"/subscriptions/{SUB}/resourceGroups/rg-dc1/providers/Microsoft.HybridCompute/machines/arc-01"
    for attempt in (lambda: operations.start_restart(arc), lambda: operations.check_restart(arc, "token")):
        with pytest.raises(PermanentArmError) as caught:
            attempt()
        assert caught.value.failure.code == "RestartNotSupported"
        assert "rebootSetting Always" in caught.value.failure.hint


def test_the_seed_run_searches_answer_from_the_rows(operations, loganalytics, tls, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    at = NOW + timedelta(minutes=30)
    rhel = install(operations, "rhel-01")
    rows = [
        *run_progress_rows(machine("rhel-01", "redhat"), rhel, "rhel-critical", "r1", at),
        *run_progress_rows(machine("broken-01"), install(operations, "broken-01"), "rhel-critical", "r1", at),
        *run_progress_rows(machine("slow-01"), install(operations, "slow-01", timedelta(minutes=45)),
                           "other-run", "r2", at),
    ]  # fmt: skip
    LogSink(EmulatorCredential(), loganalytics.base_url, DCR).send(UPDATE_RUN_PROGRESS, rows)
    failed = loganalytics.query(
        'UpdateRunProgress | where InstallationStatus == "failed" '
        "| summarize AggregatedValue = count() by Computer, Title, UpdateRunName"
    )
    assert [(r["Computer"], r["Title"], r["UpdateRunName"], r["AggregatedValue"]) for r in failed] == [
        ("broken-01", "sudo", "rhel-critical", 1)
    ]
    updated = loganalytics.query(
        'UpdateRunProgress | where UpdateRunName == "rhel-critical" '
        "| summarize AggregatedValue = count() by Computer"
    )
    counts = sorted((r["Computer"], r["AggregatedValue"]) for r in updated)
    assert counts == [("broken-01", 3), ("rhel-01", 3)]  # slow-01 ran in another deployment
