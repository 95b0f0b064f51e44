"""Reading machines from Azure Resource Manager (the compute and hybrid-compute adapters).

One list call per subscription and provider, not one GET per machine: ARM allows a
principal about 25 reads per second after a burst of 250 (AZURE-FACTS, ARM throttling),
so a per-machine GET would not scale to a large fleet. Azure VMs are listed twice,
once for the model (OS profile, tags) and once with ``statusOnly=true`` for the
instance view (power state, OS name and version as the guest agent reports them).
What changed on the machines' updates is read from Resource Graph
(:func:`shared.azure.resource_graph.fleet_patch_activity`): nothing documents that this
listing carries ``patchStatus``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.hybridcompute import HybridComputeManagementClient

from shared.azure.clients import shared_client
from shared.model.machines import Machine, MachineKind, OsType, PowerState, parse_resource_id

logger = logging.getLogger(__name__)

# Pinned so that a library upgrade cannot silently change the wire format we rely on.
COMPUTE_API_VERSION = "2024-07-01"
HYBRID_COMPUTE_API_VERSION = "2024-07-10"


def arm_clients(
    credential: TokenCredential, arm_endpoint: str, subscription_id: str
) -> tuple[ComputeManagementClient, HybridComputeManagementClient]:
    """The compute and hybrid-compute clients for one subscription, scoped to ``arm_endpoint``: the
    process's pair for this endpoint, subscription and credential (shared.azure.clients), never closed."""
    return shared_client(
        ("arm", arm_endpoint, subscription_id, credential),
        lambda: _new_arm_clients(credential, arm_endpoint, subscription_id),
    )


def _new_arm_clients(
    credential: TokenCredential, arm_endpoint: str, subscription_id: str
) -> tuple[ComputeManagementClient, HybridComputeManagementClient]:
    scopes = [arm_endpoint.rstrip("/") + "/.default"]
    compute = ComputeManagementClient(
        credential, subscription_id, base_url=arm_endpoint, credential_scopes=scopes
    )
    # The hybrid-compute client takes its api-version once, in the constructor.
    hybrid = HybridComputeManagementClient(
        credential, subscription_id, base_url=arm_endpoint, credential_scopes=scopes,
        api_version=HYBRID_COMPUTE_API_VERSION,
    )
    return compute, hybrid


class MachineDirectory:
    """Lists the Azure VMs and Arc-enabled servers of one subscription as :class:`Machine`."""

    def __init__(self, credential: TokenCredential, arm_endpoint: str, subscription_id: str) -> None:
        self._subscription_id = subscription_id
        self._compute, self._hybrid = arm_clients(credential, arm_endpoint, subscription_id)

    def machines(self) -> Iterator[Machine]:
        yield from self.virtual_machines()
        yield from self.arc_servers()

    def virtual_machines(self) -> Iterator[Machine]:
        views = {
            vm.id.lower(): vm.instance_view
            for vm in self._compute.virtual_machines.list_all(
                status_only="true", api_version=COMPUTE_API_VERSION
            )
            if vm.id
        }
        for vm in self._compute.virtual_machines.list_all(api_version=COMPUTE_API_VERSION):
            yield vm_to_machine(vm, views.get((vm.id or "").lower()))

    def arc_servers(self) -> Iterator[Machine]:
        for server in self._hybrid.machines.list_by_subscription():
            yield arc_to_machine(server)


def vm_power_state(instance_view: Any) -> PowerState:
    """A VM's power state from its instance view's ``PowerState/...`` status."""
    for status in getattr(instance_view, "statuses", None) or []:
        code = (status.code or "").lower()
        if code.startswith("powerstate/"):
            try:
                return PowerState(code.split("/", 1)[1])
            except ValueError:
                return PowerState.UNKNOWN
    return PowerState.UNKNOWN


def list_fleet(
    credential: TokenCredential, arm_endpoint: str, subscription_ids: Iterable[str]
) -> tuple[list[Machine], list[str]]:
    """Every machine of the subscriptions, and the subscriptions that could not be listed.

    azure-core has already retried throttling and transient errors by the time a listing
    fails; what is left (no access, not registered, gone) is named, logged and skipped, so
    one bad subscription never hides the others.
    """
    machines: list[Machine] = []
    failed: list[str] = []
    for subscription_id in subscription_ids:
        directory = MachineDirectory(credential, arm_endpoint, subscription_id)
        try:
            machines.extend(directory.machines())
        except (HttpResponseError, ServiceRequestError) as error:
            logger.warning("listing the machines of subscription %s failed: %s", subscription_id, error)
            failed.append(subscription_id)
    return machines, failed


def enum_text(value: Any) -> str:
    """An SDK enum's value as text: they are str subclasses whose str() is the member name on 3.11."""
    return str(getattr(value, "value", value) or "")


def _patch_mode(os_profile: Any, os_type: OsType) -> str:
    if os_profile is None:
        return ""
    config = (
        os_profile.windows_configuration if os_type is OsType.WINDOWS else os_profile.linux_configuration
    )
    settings = getattr(config, "patch_settings", None)
    return enum_text(getattr(settings, "patch_mode", None))


def _os_type(value: Any) -> OsType:
    return OsType.WINDOWS if enum_text(value).lower() == "windows" else OsType.LINUX


def _image_os_name(vm: Any) -> str:
    """The OS as the marketplace image names it; used when the guest agent has not reported
    (a deallocated VM's instance view carries no OS name)."""
    image = vm.storage_profile.image_reference if vm.storage_profile else None
    if image is None or not image.offer:
        return ""
    return f"{image.offer} {image.sku or ''}".strip()


def _image_urn(vm: Any) -> str:
    """The marketplace image as ``publisher:offer:sku`` (the URN without its version); empty for a VM
    made from a custom image or a disk, whose reference has an id instead."""
    image = vm.storage_profile.image_reference if vm.storage_profile else None
    if image is None or not (image.publisher or image.offer or image.sku):
        return ""
    return ":".join(part or "" for part in (image.publisher, image.offer, image.sku))


def vm_to_machine(vm: Any, instance_view: Any) -> Machine:
    ref = parse_resource_id(vm.id)
    os_disk = vm.storage_profile.os_disk if vm.storage_profile else None
    os_type = _os_type(os_disk.os_type if os_disk else None)
    return Machine(
        resource_id=vm.id,
        name=vm.name,
        computer_name=(
            getattr(instance_view, "computer_name", None)
            or (vm.os_profile.computer_name if vm.os_profile else None)
            or vm.name
        ),
        kind=MachineKind.AZURE_VM,
        subscription_id=ref.subscription_id,
        resource_group=ref.resource_group,
        location=vm.location,
        os_type=os_type,
        os_name=getattr(instance_view, "os_name", None) or _image_os_name(vm),
        os_version=getattr(instance_view, "os_version", None) or "",
        image=_image_urn(vm),
        power_state=vm_power_state(instance_view),
        patch_mode=_patch_mode(vm.os_profile, os_type),
        tags=dict(vm.tags or {}),
    )


_ARC_STATUS = {"connected": PowerState.RUNNING, "disconnected": PowerState.DISCONNECTED}


def arc_power_state(server: Any) -> PowerState:
    """An Arc-enabled server's status (Connected, Disconnected, Error) as a power state."""
    return _ARC_STATUS.get(enum_text(server.properties.status).lower(), PowerState.UNKNOWN)


def arc_to_machine(server: Any) -> Machine:
    ref = parse_resource_id(server.id)
    props = server.properties
    os_type = _os_type(props.os_type)
    return Machine(
        resource_id=server.id,
        name=server.name,
        computer_name=props.machine_fqdn or props.display_name or server.name,
        kind=MachineKind.ARC_SERVER,
        subscription_id=ref.subscription_id,
        resource_group=ref.resource_group,
        location=server.location,
        os_type=os_type,
        # osSku is the product ("Windows Server 2022 Datacenter"); osName may be the family ("windows").
        os_name=props.os_sku or props.os_name or "",
        os_version=props.os_version or "",
        power_state=arc_power_state(server),
        patch_mode=_patch_mode(props.os_profile, os_type),
        tags=dict(server.tags or {}),
    )
