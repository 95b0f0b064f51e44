"""What a rollback needs from the ARM stand-in, through the real SDK clients over HTTPS: incremental
snapshots with tags, disks created from them, deallocate and start, the OS and data disk swap, Run
Command on VMs and Arc servers, and a machine's health that an update breaks and a restored disk
brings back (issue 14, item 6).

The stand-in's answers are also compared with the specification examples they follow
(``tests/fixtures/azure``: ``snapshot_incremental.json``, ``disk_from_snapshot.json``,
``vm_os_disk_swap.json``, ``vm_run_command.json``, ``arc_run_command.json``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import (
    CreationData,
    DataDisk,
    Disk,
    DiskProperties,
    ManagedDiskParameters,
    RunCommandInput,
    RunCommandResult,
    Snapshot,
    SnapshotProperties,
    VirtualMachine,
    VirtualMachineInstallPatchesParameters,
    VirtualMachineUpdate,
)
from azure.mgmt.compute.models import LinuxParameters as VmLinuxParameters
from azure.mgmt.hybridcompute import HybridComputeManagementClient
from azure.mgmt.hybridcompute.models import (
    LinuxParameters,
    MachineInstallPatchesParameters,
    MachineRunCommand,
    MachineRunCommandProperties,
    MachineRunCommandScriptSource,
)

from local.arm.fleet import Fleet, FleetError, parse_fleet
from local.arm.server import ArmStandIn
from local.clock import VirtualClock
from local.tls import LocalTls, ensure_local_tls
from shared.azure.arm import COMPUTE_API_VERSION, HYBRID_COMPUTE_API_VERSION

SUB = "22222222-2222-4222-8222-222222222222"
RG = "rg-app"
V = {"api_version": COMPUTE_API_VERSION}
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"
HEALTH_SCRIPT = ["systemctl is-active --quiet myapp || { echo 'myapp down' >&2; exit 1; }"]


class FakeCredential:
    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken("local-test-token", int(time.time()) + 3600)


def _machine(name: str, os: str = "ubuntu-20.04", **extra: object) -> dict[str, object]:
    os_type, os_name, os_version, updates = {
        "ubuntu-20.04": ("Linux", "ubuntu", "20.04", ["openssl", "libssl1.1", "sudo", "tzdata"]),
        "ws2019": ("Windows", "Windows Server 2019 Datacenter", "10.0.17763.5329", ["KB5034768"]),
    }[os]  # fmt: skip
    machine: dict[str, object] = {
        "subscription": SUB, "resourceGroup": RG, "name": name, "kind": "azure-vm", "osType": os_type,
        "osName": os_name, "osVersion": os_version, "location": "westeurope", "availableUpdates": updates,
    }  # fmt: skip
    return machine | extra


def _fleet() -> Fleet:
    breaks = {"breaksHealth": ["libssl1.1"]}
    return parse_fleet(
        {
            "subscriptions": [{"id": SUB}],
            "machines": [
                _machine("web-01", behaviours=breaks, dataDisks=[{"lun": 0, "diskSizeGb": 64}, {"lun": 1}]),
                _machine("win-01", "ws2019", behaviours={"breaksHealth": ["KB5034768"]}),
                _machine("sick-01", behaviours={"unhealthy": True}),
                _machine("arc-01", kind="arc-server", resourceGroup="rg-dc1", behaviours=breaks),
                _machine("arc-02", kind="arc-server", resourceGroup="rg-dc1", powerState="stopped"),
            ],
        }
    )


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> LocalTls:
    return ensure_local_tls(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def arm(tls: LocalTls) -> Iterator[ArmStandIn]:
    with ArmStandIn(_fleet(), VirtualClock(), tls, auto_advance=True) as server:
        yield server


def _options(arm: ArmStandIn, tls: LocalTls) -> dict[str, Any]:
    return {
        "base_url": arm.base_url,
        "credential_scopes": [arm.base_url + "/.default"],
        "polling_interval": 0,
        "connection_verify": str(tls.ca_file),
    }


@pytest.fixture
def compute(arm: ArmStandIn, tls: LocalTls) -> Iterator[ComputeManagementClient]:
    client = ComputeManagementClient(FakeCredential(), SUB, **_options(arm, tls))
    yield client
    client.close()


@pytest.fixture
def hybrid(arm: ArmStandIn, tls: LocalTls) -> Iterator[HybridComputeManagementClient]:
    client = HybridComputeManagementClient(
        FakeCredential(), SUB, api_version=HYBRID_COMPUTE_API_VERSION, **_options(arm, tls)
    )
    yield client
    client.close()


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def _raw(arm: ArmStandIn, tls: LocalTls, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(
        method,
        f"{arm.base_url}{path}?api-version={COMPUTE_API_VERSION}",
        json=body,
        headers={"Authorization": "Bearer local-test-token"},
        verify=str(tls.ca_file),
        timeout=10,
    )


def _error(caught: pytest.ExceptionInfo[HttpResponseError]) -> tuple[int | None, str, str]:
    error = caught.value.error
    return caught.value.status_code, str(getattr(error, "code", "")), str(getattr(error, "target", ""))


# ----- the product's steps, through the SDK


def _health(compute: ComputeManagementClient, vm: str, command: str = "RunShellScript") -> tuple[str, str]:
    """stdout and stderr of the health script: the VM action reports no exit code, only the streams."""
    result: RunCommandResult = compute.virtual_machines.begin_run_command(
        RG, vm, RunCommandInput(command_id=command, script=HEALTH_SCRIPT), **V
    ).result()
    statuses = result.value or []
    if command == "RunPowerShellScript":
        streams = {s.code: s.message or "" for s in statuses}
        return streams["ComponentStatus/StdOut/succeeded"], streams["ComponentStatus/StdErr/succeeded"]
    assert [s.code for s in statuses] == ["ProvisioningState/succeeded"]
    message = statuses[0].message or ""
    assert message.startswith("Enable succeeded: \n[stdout]\n")
    stdout, _, stderr = message.removeprefix("Enable succeeded: \n[stdout]\n").partition("\n[stderr]\n")
    return stdout.strip(), stderr.strip()


def _snapshot(compute: ComputeManagementClient, name: str, disk_id: str, **tags: str) -> Snapshot:
    return compute.snapshots.begin_create_or_update(
        RG,
        name,
        Snapshot(
            location="westeurope",
            tags=tags,
            properties=SnapshotProperties(
                incremental=True, creation_data=CreationData(create_option="Copy", source_resource_id=disk_id)
            ),
        ),
        **V,
    ).result()


def _disk_from(compute: ComputeManagementClient, name: str, snapshot_id: str) -> Disk:
    return compute.disks.begin_create_or_update(
        RG,
        name,
        Disk(
            location="westeurope",
            properties=DiskProperties(
                creation_data=CreationData(create_option="Copy", source_resource_id=snapshot_id)
            ),
        ),
        **V,
    ).result()


def _install(compute: ComputeManagementClient, vm: str) -> None:
    compute.virtual_machines.begin_install_patches(
        RG,
        vm,
        VirtualMachineInstallPatchesParameters(
            maximum_duration="PT2H",
            reboot_setting="IfRequired",
            linux_parameters=VmLinuxParameters(classifications_to_include=["Critical", "Security"]),
        ),
        **V,
    ).result()


def _swap_os_disk(compute: ComputeManagementClient, vm_name: str, disk: Disk) -> VirtualMachine:
    """What Microsoft's OS disk swap page does: set the OS disk's managed disk id and name, PUT the VM."""
    vm = compute.virtual_machines.get(RG, vm_name, **V)
    assert vm.storage_profile and vm.storage_profile.os_disk and vm.storage_profile.os_disk.managed_disk
    vm.storage_profile.os_disk.managed_disk.id = disk.id
    vm.storage_profile.os_disk.name = disk.name
    return compute.virtual_machines.begin_create_or_update(RG, vm_name, vm, **V).result()


def _power(compute: ComputeManagementClient, vm: str) -> str:
    view = compute.virtual_machines.instance_view(RG, vm, **V)
    return next(s.code for s in view.statuses or [] if (s.code or "").startswith("PowerState/"))


def test_a_vm_shows_its_os_and_data_disks_as_managed_disks_with_ids(compute):
    vm = compute.virtual_machines.get(RG, "web-01", **V)
    os_disk = vm.storage_profile.os_disk
    assert os_disk.managed_disk.id.endswith("/providers/Microsoft.Compute/disks/" + os_disk.name)
    assert [(d.lun, d.disk_size_gb) for d in vm.storage_profile.data_disks] == [(0, 64), (1, 128)]
    for ref in (os_disk, *vm.storage_profile.data_disks):
        disk = compute.disks.get(RG, ref.managed_disk.id.rsplit("/", 1)[1], **V)
        assert disk.id == ref.managed_disk.id
        assert disk.managed_by == vm.id and disk.properties.disk_state == "Attached"
    assert compute.disks.get(RG, os_disk.name, **V).properties.os_type == "Linux"


def test_an_update_that_breaks_health_is_rolled_back_from_the_snapshot_taken_before_it(arm, compute):
    """The issue's scenario: check, snapshot, install, check fails, deallocate, restore, start, check."""
    web_id = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/web-01"
    before = arm.disk_state(web_id)
    assert before[1] is None
    assert _health(compute, "web-01")[1] == ""
    vm = compute.virtual_machines.get(RG, "web-01", **V)
    old_disk_id = vm.storage_profile.os_disk.managed_disk.id

    snapshot = _snapshot(compute, "web-01-os-run1", old_disk_id, run="run1", machine="web-01", disk="os")
    assert snapshot.properties.incremental is True
    assert snapshot.tags == {"run": "run1", "machine": "web-01", "disk": "os"}
    assert snapshot.properties.creation_data.source_resource_id == old_disk_id
    assert snapshot.properties.provisioning_state == "Succeeded" and snapshot.properties.os_type == "Linux"

    _install(compute, "web-01")
    stderr = _health(compute, "web-01")[1]
    assert "libssl1.1" in stderr and "fails" in stderr
    installed, failure = arm.disk_state(web_id)
    assert any(u.startswith("libssl1.1_") for u in installed) and failure == stderr

    compute.virtual_machines.begin_deallocate(RG, "web-01", **V).result()
    assert _power(compute, "web-01") == "PowerState/deallocated"
    restored = _disk_from(compute, "web-01-os-restored", snapshot.id)
    assert restored.properties.os_type == "Linux" and restored.properties.disk_state == "Unattached"
    updated = _swap_os_disk(compute, "web-01", restored)
    assert updated.storage_profile.os_disk.managed_disk.id == restored.id
    compute.virtual_machines.begin_start(RG, "web-01", **V).result()
    assert _power(compute, "web-01") == "PowerState/running"

    assert _health(compute, "web-01")[1] == ""
    assert arm.disk_state(web_id) == before
    assessment = compute.virtual_machines.begin_assess_patches(RG, "web-01", **V).result()
    assert "libssl1.1" in {p.name for p in assessment.available_patches}
    # The replaced disk is kept, detached, holding the broken state; it can be deleted later.
    replaced = compute.disks.get(RG, old_disk_id.rsplit("/", 1)[1], **V)
    assert replaced.managed_by is None and replaced.properties.disk_state == "Unattached"
    assert compute.disks.get(RG, "web-01-os-restored", **V).managed_by.endswith("/web-01")


def test_a_swapped_back_disk_brings_back_what_it_held(arm, compute):
    """The replaced disk holds the state it had when it was detached: swapping it back restores the break."""
    vm = compute.virtual_machines.get(RG, "web-01", **V)
    original = vm.storage_profile.os_disk.managed_disk.id
    snapshot = _snapshot(compute, "snap-a", original)
    _install(compute, "web-01")
    compute.virtual_machines.begin_deallocate(RG, "web-01", **V).result()
    _swap_os_disk(compute, "web-01", _disk_from(compute, "disk-a", snapshot.id))
    _swap_os_disk(compute, "web-01", compute.disks.get(RG, original.rsplit("/", 1)[1], **V))
    compute.virtual_machines.begin_start(RG, "web-01", **V).result()
    assert "libssl1.1" in _health(compute, "web-01")[1]


def test_the_os_disk_of_a_running_vm_cannot_be_swapped(compute):
    snapshot = _snapshot(
        compute,
        "snap-b",
        compute.virtual_machines.get(RG, "web-01", **V).storage_profile.os_disk.managed_disk.id,
    )
    disk = _disk_from(compute, "disk-b", snapshot.id)
    with pytest.raises(HttpResponseError) as caught:
        _swap_os_disk(compute, "web-01", disk)
    assert _error(caught) == (409, "PropertyChangeNotAllowed", "osDisk.managedDisk.id")
    # A VM stopped but not deallocated is refused too: the swap page asks for stopped (deallocated).
    compute.virtual_machines.begin_power_off(RG, "web-01", **V).result()
    with pytest.raises(HttpResponseError):
        _swap_os_disk(compute, "web-01", disk)


def test_a_data_disk_is_replaced_by_lun_through_patch_even_while_running(compute):
    vm = compute.virtual_machines.get(RG, "web-01", **V)
    old = vm.storage_profile.data_disks[1].managed_disk.id
    snapshot = _snapshot(compute, "snap-data1", old, disk="lun1")
    restored = _disk_from(compute, "web-01-data1-restored", snapshot.id)
    keep = vm.storage_profile.data_disks[0]
    update = VirtualMachineUpdate(
        storage_profile={
            "dataDisks": [
                {"lun": 0, "createOption": "Attach", "managedDisk": {"id": keep.managed_disk.id}},
                DataDisk(lun=1, create_option="Attach", managed_disk=ManagedDiskParameters(id=restored.id)),
            ]
        }
    )
    after = compute.virtual_machines.begin_update(RG, "web-01", update, **V).result()
    assert [(d.lun, d.managed_disk.id) for d in after.storage_profile.data_disks] == [
        (0, keep.managed_disk.id),
        (1, restored.id),
    ]
    assert compute.disks.get(RG, old.rsplit("/", 1)[1], **V).managed_by is None


def test_an_attached_disk_cannot_be_deleted_and_a_detached_one_can(compute):
    vm = compute.virtual_machines.get(RG, "web-01", **V)
    with pytest.raises(HttpResponseError) as caught:
        compute.disks.begin_delete(RG, vm.storage_profile.os_disk.name, **V).result()
    assert _error(caught)[:2] == (409, "OperationNotAllowed")
    snapshot = _snapshot(compute, "snap-c", vm.storage_profile.os_disk.managed_disk.id)
    _disk_from(compute, "disk-c", snapshot.id)
    compute.disks.begin_delete(RG, "disk-c", **V).result()
    compute.snapshots.begin_delete(RG, "snap-c", **V).result()
    with pytest.raises(ResourceNotFoundError):
        compute.snapshots.get(RG, "snap-c", **V)
    assert [s.name for s in compute.snapshots.list_by_resource_group(RG, **V)] == []


def test_windows_health_shows_on_stderr_after_the_breaking_kb(compute):
    assert _health(compute, "win-01", "RunPowerShellScript")[1] == ""
    compute.virtual_machines.begin_install_patches(
        RG,
        "win-01",
        VirtualMachineInstallPatchesParameters(
            maximum_duration="PT2H",
            reboot_setting="IfRequired",
            windows_parameters={
                "classificationsToInclude": ["Critical", "Security"],
                "kbNumbersToInclude": ["5034768"],
            },
        ),
        **V,
    ).result()
    assert "KB5034768" in _health(compute, "win-01", "RunPowerShellScript")[1]


def test_a_machine_unhealthy_from_the_start_stays_so_on_a_disk_copied_from_it(compute):
    assert "before any install" in _health(compute, "sick-01")[1]
    os_disk = compute.virtual_machines.get(RG, "sick-01", **V).storage_profile.os_disk.managed_disk.id
    snapshot = _snapshot(compute, "sick-snap", os_disk)
    compute.virtual_machines.begin_deallocate(RG, "sick-01", **V).result()
    _swap_os_disk(compute, "sick-01", _disk_from(compute, "sick-restored", snapshot.id))
    compute.virtual_machines.begin_start(RG, "sick-01", **V).result()
    assert "before any install" in _health(compute, "sick-01")[1]


def test_run_command_refuses_a_deallocated_vm(compute):
    compute.virtual_machines.begin_deallocate(RG, "win-01", **V).result()
    with pytest.raises(HttpResponseError) as caught:
        _health(compute, "win-01", "RunPowerShellScript")
    assert _error(caught)[:2] == (409, "OperationNotAllowed")


# ----- Arc servers


def _arc_check(hybrid: HybridComputeManagementClient, machine: str, name: str) -> MachineRunCommand:
    return hybrid.machine_run_commands.begin_create_or_update(
        "rg-dc1",
        machine,
        name,
        MachineRunCommand(
            location="westeurope",
            properties=MachineRunCommandProperties(
                source=MachineRunCommandScriptSource(script="\n".join(HEALTH_SCRIPT)),
                run_as_password="s3cret",
            ),
        ),
    ).result()


def test_arc_run_command_reports_exit_code_output_and_error(hybrid):
    healthy = _arc_check(hybrid, "arc-01", "health-1")
    view = healthy.properties.instance_view
    assert (view.execution_state, view.exit_code, view.error) == ("Succeeded", 0, "")
    assert healthy.properties.provisioning_state == "Succeeded" and healthy.properties.run_as_password is None
    hybrid.machines.begin_install_patches(
        "rg-dc1",
        "arc-01",
        MachineInstallPatchesParameters(
            maximum_duration="PT2H",
            reboot_setting="IfRequired",
            linux_parameters=LinuxParameters(classifications_to_include=["Critical", "Security"]),
        ),
    ).result()
    broken = _arc_check(hybrid, "arc-01", "health-2").properties.instance_view
    assert (broken.execution_state, broken.exit_code) == ("Failed", 1) and "libssl1.1" in broken.error
    again = hybrid.machine_run_commands.get("rg-dc1", "arc-01", "health-2")
    assert again.properties.instance_view.exit_code == 1
    hybrid.machine_run_commands.begin_delete("rg-dc1", "arc-01", "health-2").result()
    with pytest.raises(ResourceNotFoundError):
        hybrid.machine_run_commands.get("rg-dc1", "arc-01", "health-2")


def test_a_disconnected_arc_server_refuses_run_command(hybrid):
    with pytest.raises(HttpResponseError) as caught:
        _arc_check(hybrid, "arc-02", "health")
    assert _error(caught)[:2] == (409, "OperationNotAllowed")


def test_arc_servers_have_no_disks_to_snapshot(compute, hybrid):
    arc = hybrid.machines.get("rg-dc1", "arc-01")
    assert list(compute.disks.list_by_resource_group("rg-dc1", **V)) == []
    with pytest.raises(ResourceNotFoundError):
        _snapshot(compute, "arc-01-os", arc.id)


def test_the_fleet_file_gives_disks_to_vms_only_and_one_disk_per_lun():
    base = {"subscriptions": [{"id": SUB}]}
    with pytest.raises(FleetError, match=r"arc-09.*Arc server has no disks"):
        parse_fleet(base | {"machines": [_machine("arc-09", kind="arc-server", dataDisks=[{"lun": 0}])]})
    with pytest.raises(FleetError, match="two disks on one lun"):
        parse_fleet(base | {"machines": [_machine("vm-09", dataDisks=[{"lun": 2}, {"lun": 2}])]})


# ----- the answers against the specification examples


def _keys(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a JSON value; list items merged."""
    if isinstance(value, dict):
        paths: set[str] = set()
        for key, item in value.items():
            # Tags are the caller's own names, not part of the shape.
            inner = set() if key == "tags" else _keys(item, f"{prefix}{key}.")
            paths |= {f"{prefix}{key}"} | inner
        return paths
    if isinstance(value, list):
        return set().union(*(_keys(item, prefix) for item in value)) if value else set()
    return set()


# What the examples carry and the stand-in does not simulate (encryption, marketplace plans, security
# features): no rollback step reads them.
NOT_SIMULATED = (
    "properties.encryptionSettingsCollection", "properties.purchasePlan", "properties.supportedCapabilities",
    "properties.supportsHibernation", "properties.hyperVGeneration", "properties.networkAccessPolicy",
    "properties.securityProfile", "properties.LastOwnershipUpdateTime",
)  # fmt: skip


def _missing(expected: Any, answered: Any) -> set[str]:
    return {
        k for k in _keys(expected) - _keys(answered) if not k.removeprefix("value.").startswith(NOT_SIMULATED)
    }


def _path(kind: str, name: str = "", rg: str = RG) -> str:
    provider = "Microsoft.HybridCompute" if kind.startswith("machines") else "Microsoft.Compute"
    return f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/{provider}/{kind}" + (
        f"/{name}" if name else ""
    )


def _os_disk_id(compute: ComputeManagementClient, vm: str = "web-01") -> str:
    return str(compute.virtual_machines.get(RG, vm, **V).storage_profile.os_disk.managed_disk.id)


def test_snapshot_put_answers_202_with_the_resource_updating_and_get_the_incremental_shape(arm, tls, compute):
    shapes = _fixture("snapshot_incremental.json")
    os_disk = _os_disk_id(compute)
    request = shapes["createRequest"] | {"tags": {"run": "r"}}
    # The example's form of the source id (no leading slash), with the product's incremental flag.
    request["properties"] = {
        "incremental": True,
        "creationData": {"createOption": "Copy", "sourceResourceId": os_disk.lstrip("/")},
    }
    path = _path("snapshots", "shape-1")
    accepted = _raw(arm, tls, "PUT", path, request)
    assert accepted.status_code == 202
    assert {"Azure-AsyncOperation", "Location"} <= set(accepted.headers)
    assert "monitor=true" in accepted.headers["Location"]
    assert _missing(shapes["createAccepted"], accepted.json()) == set()
    assert accepted.json()["properties"]["provisioningState"] == "Updating"
    status = requests.get(
        accepted.headers["Azure-AsyncOperation"],
        headers={"Authorization": "Bearer t"},
        verify=str(tls.ca_file),
        timeout=10,
    )
    assert status.json()["status"] == "InProgress"
    arm.clock.advance(timedelta(minutes=5))
    got = _raw(arm, tls, "GET", path).json()
    assert _missing(shapes["getIncremental"], got) == set()
    source = compute.disks.get(RG, os_disk.rsplit("/", 1)[1], **V)
    assert got["properties"]["creationData"]["sourceUniqueId"] == source.properties.unique_id
    assert _missing(shapes["listByResourceGroup"], _raw(arm, tls, "GET", _path("snapshots")).json()) == set()
    deleted = _raw(arm, tls, "DELETE", path)
    assert deleted.status_code in shapes["deleteStatuses"] and "monitor=true" in deleted.headers["Location"]
    # The SDK's own model reads the example and the stand-in's answer alike.
    assert Snapshot(shapes["getIncremental"]).properties.incremental is True
    assert Snapshot(got).properties.incremental is True


def test_disk_put_from_a_snapshot_and_disk_get_match_the_examples(arm, tls, compute):
    shapes = _fixture("disk_from_snapshot.json")
    os_disk = _os_disk_id(compute)
    snapshot = _snapshot(compute, "shape-2", os_disk)
    request = shapes["createRequest"]
    request["properties"]["creationData"]["sourceResourceId"] = snapshot.id.lstrip("/")  # the example's form
    accepted = _raw(arm, tls, "PUT", _path("disks", "shape-disk"), request)
    assert accepted.status_code == 202 and _missing(shapes["createAccepted"], accepted.json()) == set()
    attached = _raw(arm, tls, "GET", _path("disks", os_disk.rsplit("/", 1)[1])).json()
    assert _missing(shapes["get"], attached) == set()
    assert Disk(attached).managed_by == compute.virtual_machines.get(RG, "web-01", **V).id
    assert Disk(shapes["get"]).managed_by.split("/")[-2] == "virtualMachines"


def test_vm_storage_profile_and_the_running_swap_error_match_the_fixture(arm, tls, compute):
    shapes = _fixture("vm_os_disk_swap.json")
    vm = _raw(arm, tls, "GET", _path("virtualMachines", "web-01")).json()
    assert _missing(shapes["storageProfile"], vm["properties"]["storageProfile"]) == set()
    deallocate = _raw(arm, tls, "POST", _path("virtualMachines", "win-01") + "/deallocate")
    assert deallocate.status_code in shapes["deallocateStatuses"]
    assert {k.lower() for k in shapes["deallocateAcceptedHeaders"]} <= {k.lower() for k in deallocate.headers}
    snapshot = _snapshot(
        compute, "shape-3", vm["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"]
    )
    disk = _disk_from(compute, "shape-3-disk", snapshot.id)
    vm["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"] = disk.id
    refused = _raw(arm, tls, "PUT", _path("virtualMachines", "web-01"), vm)
    expected = shapes["runningVmOsDiskChange"]
    assert (refused.status_code, refused.json()) == (expected["status"], expected["body"])


@pytest.mark.parametrize(
    ("vm", "command", "key"),
    [("web-01", "RunShellScript", "linux"), ("win-01", "RunPowerShellScript", "windows")],
)
def test_vm_run_command_answers_in_the_examples_shape(compute, vm, command, key):
    expected = _fixture("vm_run_command.json")[key]
    result = compute.virtual_machines.begin_run_command(
        RG, vm, RunCommandInput(command_id=command, script=HEALTH_SCRIPT), **V
    ).result()
    answered = {"value": [dict(status) for status in result.value]}
    assert [s["code"] for s in answered["value"]] == [s["code"] for s in expected["value"]]
    assert _missing(expected, answered) == set()
    if key == "linux":
        message = answered["value"][0]["message"]
        assert message.startswith("Enable succeeded: \n[stdout]\n") and "\n[stderr]\n" in message


def test_arc_run_command_put_and_get_answer_in_the_examples_shape(arm, tls):
    shapes = _fixture("arc_run_command.json")
    url = f"{arm.base_url}{_path('machines', 'arc-01', 'rg-dc1')}/runCommands/shape"
    call = {"headers": {"Authorization": "Bearer t"}, "verify": str(tls.ca_file), "timeout": 10}
    query = {"api-version": HYBRID_COMPUTE_API_VERSION}
    created = requests.put(url, params=query, json=shapes["createRequest"], **call)  # type: ignore[arg-type]
    assert created.status_code == 201
    assert {"Location", "Azure-AsyncOperation"} <= set(created.headers)
    assert _missing(shapes["createCreated"], created.json()) == set()
    assert "runAsPassword" not in created.json()["properties"]
    arm.clock.advance(timedelta(minutes=5))
    got = requests.get(url, params=query, **call).json()  # type: ignore[arg-type]
    # protectedParameters are the caller's secrets: the stand-in never echoes them.
    assert _missing(shapes["get"], got) - {"properties.protectedParameters"} == set()
    assert MachineRunCommand(got).properties.instance_view.exit_code == 0
