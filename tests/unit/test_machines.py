from typing import Any

import pytest
from azure.mgmt.compute.models import (
    ImageReference,
    OSDisk,
    StorageProfile,
    VirtualMachine,
    VirtualMachineInstanceView,
)
from azure.mgmt.hybridcompute.models import Machine as ArcMachine
from azure.mgmt.hybridcompute.models import MachineProperties

from shared.azure.arm import arc_to_machine, vm_to_machine
from shared.model.machines import (
    Environment,
    Machine,
    MachineKind,
    OsType,
    PowerState,
    Support,
    machine_key,
    parse_resource_id,
    support_for,
)

VM_ID = "/subscriptions/ABC/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/web01"
ARC_ID = "/subscriptions/abc/resourceGroups/onprem/providers/Microsoft.HybridCompute/machines/db01"


@pytest.mark.parametrize(
    ("os_type", "name", "version", "expected"),
    [
        (OsType.WINDOWS, "Windows Server 2022 Datacenter", "10.0.20348", Support.FULL),
        (OsType.WINDOWS, "Windows 10 Enterprise", "10.0.19045", Support.UNSUPPORTED),
        (OsType.WINDOWS, "Windows Server 2016 Datacenter Nano Server", "10.0.14393", Support.UNSUPPORTED),
        (OsType.WINDOWS, "Windows Server 2008 R2 Datacenter", "6.1.7600", Support.ASSESSMENT_ONLY),
        (OsType.WINDOWS, "Windows Server 2008 Datacenter", "6.0.6003", Support.ASSESSMENT_ONLY),
        (OsType.WINDOWS, "Windows Server 2008 R2 SP1 Datacenter", "6.1.7601", Support.FULL),
        (OsType.WINDOWS, "Windows Server 2008 R2 Datacenter", "6.1.7601.24545", Support.FULL),
        (OsType.LINUX, "Ubuntu", "22.04", Support.FULL),
    ],
)
def test_support_follows_the_supported_os_table(os_type, name, version, expected):
    verdict = support_for(os_type, name, version)
    assert verdict.support is expected
    assert bool(verdict.reason) == (expected is not Support.FULL)


def test_resource_ids_parse_and_keys_are_case_insensitive_and_table_safe():
    ref = parse_resource_id(VM_ID)
    assert (ref.subscription_id, ref.resource_group, ref.name, ref.kind) == ("abc", "rg-web", "web01",
                                                                              MachineKind.AZURE_VM)
    assert parse_resource_id(ARC_ID).kind is MachineKind.ARC_SERVER
    assert machine_key(VM_ID) == machine_key(VM_ID.lower())
    assert not set("/\\#?") & set(machine_key(VM_ID))
    with pytest.raises(ValueError, match="not a virtual machine or Arc-enabled server id"):
        parse_resource_id("/subscriptions/abc/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/x")


def _machine(kind: MachineKind, power: PowerState) -> Machine:
    return Machine(VM_ID, "web01", "web01", kind, "abc", "rg-web", "westeurope", OsType.LINUX, "Ubuntu",
                   "22.04", power, "ImageDefault")


def test_environment_and_reachability():
    assert _machine(MachineKind.AZURE_VM, PowerState.RUNNING).environment is Environment.AZURE
    assert _machine(MachineKind.ARC_SERVER, PowerState.RUNNING).environment is Environment.NON_AZURE
    assert _machine(MachineKind.AZURE_VM, PowerState.RUNNING).reachable_reason == ""
    assert "deallocated" in _machine(MachineKind.AZURE_VM, PowerState.DEALLOCATED).reachable_reason
    assert "Arc agent" in _machine(MachineKind.ARC_SERVER, PowerState.DISCONNECTED).reachable_reason


NANO_IMAGE = "MicrosoftWindowsServer:WindowsServer:2016-Nano-Server"


@pytest.mark.parametrize(
    ("name", "image", "expected"),
    [
        # The guest agent of a Nano Server VM may name it like any 2016 Datacenter: its image says Nano.
        ("Windows Server 2016 Datacenter", NANO_IMAGE, Support.UNSUPPORTED),
        ("", NANO_IMAGE, Support.UNSUPPORTED),  # deallocated: no OS name reported at all
        ("Windows Server 2016 Datacenter", "MicrosoftWindowsServer:WindowsServer:2016-Datacenter",
         Support.FULL),
        # A publisher or offer that merely contains the letters is not a Nano SKU.
        ("Windows Server 2022 Datacenter", "nanocorp:WindowsServer:2022-datacenter", Support.FULL),
    ],
)
def test_nano_server_is_recognised_from_the_image_sku_as_well(name, image, expected):
    verdict = support_for(OsType.WINDOWS, name, "10.0.14393", image)
    assert verdict.support is expected
    if expected is Support.UNSUPPORTED:
        assert "Nano Server" in verdict.reason and image in verdict.reason


def _vm_model(sku: str) -> Any:
    image = ImageReference(publisher="MicrosoftWindowsServer", offer="WindowsServer", sku=sku)
    vm = VirtualMachine(location="westeurope", storage_profile=StorageProfile(
        image_reference=image, os_disk=OSDisk(os_type="Windows", create_option="FromImage"),
    ))  # fmt: skip
    vm.id, vm.name = VM_ID, "web01"
    return vm


def test_discovery_keeps_the_image_and_a_nano_vm_is_unsupported_whatever_its_agent_says():
    view = VirtualMachineInstanceView(os_name="Windows Server 2016 Datacenter", os_version="10.0.14393.0")
    nano = vm_to_machine(_vm_model("2016-Nano-Server"), view)
    assert nano.image == NANO_IMAGE
    assert nano.support.support is Support.UNSUPPORTED
    assert vm_to_machine(_vm_model("2016-Datacenter"), view).support.support is Support.FULL
    custom = _vm_model("")
    custom.storage_profile.image_reference = None  # a VM made from a disk or a gallery image id
    assert vm_to_machine(custom, view).image == ""


def test_an_arc_server_is_named_by_its_os_sku_when_its_os_name_is_the_family():
    server = ArcMachine(location="westeurope", properties=MachineProperties())
    server.id, server.name = ARC_ID, "db01"
    props = server.properties
    props.os_name, props.os_sku, props.os_version = "windows", "Windows 10 Enterprise", "10.0.19045"
    props.os_type = "windows"
    props.status = "Connected"
    machine = arc_to_machine(server)
    assert machine.os_name == "Windows 10 Enterprise" and machine.support.support is Support.UNSUPPORTED
    props.os_sku = None  # older agents: the name is all there is
    assert arc_to_machine(server).os_name == "windows"
