import pytest

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
