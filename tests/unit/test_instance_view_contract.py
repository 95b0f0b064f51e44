"""The VM instance view's ``patchStatus`` and power state, from the Compute REST API specification's
example ``VirtualMachines_InstanceView`` (``tests/fixtures/azure/vm_instance_view_patch_status.json``): the
product reads it (``PatchOperations.last_installation``, ``vm_power_state``) and the ARM stand-in answers in
its shape, as the assess and install results are held in ``test_azure_contracts.py``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.compute.models import (
    ApiError,
    AvailablePatchSummary,
    LastPatchInstallationSummary,
    VirtualMachineInstanceView,
    VirtualMachinePatchStatus,
)

from local.arm.fleet import parse_fleet
from local.arm.server import ArmStandIn
from local.clock import VirtualClock
from local.tls import LocalTls, ensure_local_tls
from shared.azure import patch_operations
from shared.azure.arm import COMPUTE_API_VERSION, vm_power_state
from shared.azure.patch_operations import InstallationSeen, PatchOperations
from shared.model.machines import PowerState
from tests.unit.test_azure_contracts import SUB, WINDOWS_2019, _rest_names, _vm, assert_shape, fixture

FIXTURE = "vm_instance_view_patch_status"
# The example's path parameters (resourceGroupName, vmName).
EXAMPLE_VM = (
    f"/subscriptions/{SUB}/resourceGroups/myResourceGroup/providers/Microsoft.Compute/virtualMachines/myVM"
)


class _VirtualMachines:
    """``ComputeManagementClient.virtual_machines`` with one instance view to give."""

    def __init__(self, view: VirtualMachineInstanceView) -> None:
        self.view = view
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def instance_view(
        self, resource_group_name: str, vm_name: str, **kwargs: Any
    ) -> VirtualMachineInstanceView:
        self.calls.append((resource_group_name, vm_name, kwargs))
        return self.view


class _Compute:
    def __init__(self, view: VirtualMachineInstanceView) -> None:
        self.virtual_machines = _VirtualMachines(view)


def _operations(monkeypatch: pytest.MonkeyPatch, body: dict[str, Any]) -> tuple[PatchOperations, _Compute]:
    """``PatchOperations`` whose compute client answers ``body`` (through the SDK model); no network."""
    compute = _Compute(VirtualMachineInstanceView(body))
    monkeypatch.setattr(patch_operations, "arm_clients", lambda *args: (compute, None))
    return PatchOperations(object(), "https://management.invalid", SUB), compute  # type: ignore[arg-type]


# -- the product's readers against the fixture ----------------------------------------------------


def test_the_power_state_is_read_from_the_examples_statuses(monkeypatch: pytest.MonkeyPatch):
    body = fixture(FIXTURE)
    assert vm_power_state(VirtualMachineInstanceView(body)) is PowerState.RUNNING
    ops, _ = _operations(monkeypatch, body)
    assert ops.power_state(EXAMPLE_VM) is PowerState.RUNNING


def test_the_last_installation_is_read_from_the_examples_patch_status(monkeypatch: pytest.MonkeyPatch):
    ops, compute = _operations(monkeypatch, fixture(FIXTURE))
    seen = ops.last_installation(EXAMPLE_VM)
    asked = [("myResourceGroup", "myVM", {"api_version": COMPUTE_API_VERSION})]
    assert compute.virtual_machines.calls == asked
    assert seen is not None
    assert (seen.activity_id, seen.finished) == ("68f8b292-dfc2-4646-9981-33cc88631968", True)
    # "2020-04-24T21:02:04.2556154Z": seven fractional digits, read to the microsecond.
    assert seen.started_at == datetime(2020, 4, 24, 21, 2, 4, 255615, tzinfo=UTC)
    outcome = seen.outcome
    assert (outcome.status, outcome.activity_id) == ("Succeeded", seen.activity_id)
    counts = (outcome.installed, outcome.failed, outcome.pending, outcome.excluded, outcome.not_selected)
    assert counts == (1, 1, 1, 1, 1)
    assert outcome.maintenance_window_exceeded is False
    assert (outcome.error_code, outcome.error_message, outcome.patches) == (None, None, None)


def test_a_view_without_an_installation_means_none_was_seen(monkeypatch: pytest.MonkeyPatch):
    body = fixture(FIXTURE)
    del body["patchStatus"]["lastPatchInstallationSummary"]
    ops, _ = _operations(monkeypatch, body)
    assert ops.last_installation(EXAMPLE_VM) is None


# -- the stand-in's answer against the same fixture -----------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> LocalTls:
    return ensure_local_tls(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def arm(tls: LocalTls) -> ArmStandIn:
    """The stand-in, never started: its instance view is built as the GET would answer it."""
    updates = ["KB5034768", "KB2267602", "KB890830"]  # Security, Definition, Update Rollup
    fleet = parse_fleet({
        "subscriptions": [{"id": SUB, "name": "Test"}],
        "machines": [_vm("win01", availableUpdates=updates, **WINDOWS_2019)],
    })  # fmt: skip
    return ArmStandIn(fleet, VirtualClock(), tls)


def _vm_id(arm: ArmStandIn) -> str:
    return arm.simulation.fleet.machines[0].resource_id


def _run_to_end(arm: ArmStandIn, op: Any) -> None:
    clock = arm.clock
    assert isinstance(clock, VirtualClock)
    clock.advance_to(op.end)
    assert arm.simulation.operation(op.id).done


def _install_body() -> dict[str, Any]:
    return {"maximumDuration": "PT2H", "rebootSetting": "IfRequired",
            "windowsParameters": {"classificationsToInclude": ["Security", "Definition"]}}  # fmt: skip


def _view(arm: ArmStandIn) -> dict[str, Any]:
    """The stand-in's instance view of the VM, as it goes over the wire."""
    state = arm.simulation.machine(_vm_id(arm))
    return dict(json.loads(json.dumps(arm._instance_view(state))))


def test_the_standins_patch_status_has_the_examples_shape(arm: ArmStandIn):
    sim = arm.simulation
    _run_to_end(arm, sim.start_assessment(_vm_id(arm)))
    _run_to_end(arm, sim.start_install(_vm_id(arm), _install_body()))
    view = _view(arm)
    like = fixture(FIXTURE)
    assert set(view) <= set(like) | _rest_names(VirtualMachineInstanceView), set(view) - set(like)
    assert vm_power_state(VirtualMachineInstanceView(view)) is PowerState.RUNNING
    status = view["patchStatus"]
    assert set(status) <= set(like["patchStatus"]) | _rest_names(VirtualMachinePatchStatus)
    expected = like["patchStatus"]
    assert_shape(status["availablePatchSummary"], expected["availablePatchSummary"], AvailablePatchSummary)
    assert_shape(
        status["lastPatchInstallationSummary"], expected["lastPatchInstallationSummary"],
        LastPatchInstallationSummary,
    )  # fmt: skip
    # The assessment's counts, from before the install: one security update, two others.
    assessed = status["availablePatchSummary"]
    assert (assessed["criticalAndSecurityPatchCount"], assessed["otherPatchCount"]) == (1, 2)


def test_the_product_reads_the_standins_last_installation_as_the_simulation_holds_it(
    arm: ArmStandIn, monkeypatch: pytest.MonkeyPatch
):
    sim = arm.simulation
    vm_id = _vm_id(arm)
    op = sim.start_install(vm_id, _install_body())
    # While it runs, the view says so: an install whose token was lost is seen unfinished.
    in_progress = _view(arm)["patchStatus"]["lastPatchInstallationSummary"]
    assert set(in_progress) <= _rest_names(LastPatchInstallationSummary)
    running = _read_last_installation(arm, monkeypatch)
    assert running.finished is False and running.activity_id
    _run_to_end(arm, op)
    seen = _read_last_installation(arm, monkeypatch)
    held = sim.machine(vm_id).installation_summary
    assert held is not None and seen.activity_id == running.activity_id
    assert seen.finished is True
    assert (seen.activity_id, seen.outcome.status) == (held["installationActivityId"], held["status"])
    assert seen.started_at == datetime.fromisoformat(held["startTime"]) == op.start
    outcome = seen.outcome
    assert (
        outcome.installed, outcome.failed, outcome.pending, outcome.excluded, outcome.not_selected,
        outcome.maintenance_window_exceeded,
    ) == (
        held["installedPatchCount"], held["failedPatchCount"], held["pendingPatchCount"],
        held["excludedPatchCount"], held["notSelectedPatchCount"], held["maintenanceWindowExceeded"],
    )  # fmt: skip
    assert (outcome.installed, outcome.not_selected, outcome.failed) == (2, 1, 0)


def test_a_failed_patch_is_reported_with_an_error_the_sdk_model_knows(
    tls: LocalTls, monkeypatch: pytest.MonkeyPatch
):
    failing = {"failingPatches": ["KB5034768"]}
    fleet = parse_fleet({
        "subscriptions": [{"id": SUB, "name": "Test"}],
        "machines": [_vm("win01", availableUpdates=["KB5034768"], behaviours=failing, **WINDOWS_2019)],
    })  # fmt: skip
    arm = ArmStandIn(fleet, VirtualClock(), tls)
    _run_to_end(arm, arm.simulation.start_install(_vm_id(arm), _install_body()))
    summary = _view(arm)["patchStatus"]["lastPatchInstallationSummary"]
    like = fixture(FIXTURE)["patchStatus"]["lastPatchInstallationSummary"]
    assert_shape(summary, like, LastPatchInstallationSummary)
    assert set(summary["error"]) <= _rest_names(ApiError) and summary["error"]["code"]
    seen = _read_last_installation(arm, monkeypatch)
    assert seen.outcome.failed == 1 and seen.outcome.error_code == summary["error"]["code"]


def _read_last_installation(arm: ArmStandIn, monkeypatch: pytest.MonkeyPatch) -> InstallationSeen:
    ops, _ = _operations(monkeypatch, _view(arm))
    seen = ops.last_installation(_vm_id(arm))
    assert seen is not None
    return seen
