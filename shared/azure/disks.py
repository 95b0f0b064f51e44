"""A VM's disks, snapshots and power, as a rollback needs them (issue 14), through azure-mgmt-compute.

Every change is sent without waiting (``polling=False``) and its effect is read back by the next call:
the rollback's steps (shared.safety.restore) advance on what Azure shows (a snapshot's or disk's
``provisioningState``, the VM's power state and storage profile), so a retried step finds its work done.
Sources: incremental snapshots ``creationData.createOption: Copy`` with ``incremental: true`` ("Create an
incremental snapshot", Azure docs; spec example ``Snapshots_CreateOrUpdate``); a managed disk from a
snapshot ``createOption: Copy`` with the snapshot as ``sourceResourceId``; the OS disk of a VM is swapped
only while it is deallocated ("Change the OS disk used by an Azure VM", Azure docs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute.models import CreationData, Disk, DiskProperties, Snapshot, SnapshotProperties

from shared.azure.arm import COMPUTE_API_VERSION, arm_clients
from shared.azure.patch_operations import PatchOperations, TransientArmError, classify
from shared.model.machines import parse_resource_id

_V = {"api_version": COMPUTE_API_VERSION}


@dataclass(frozen=True)
class VmDisk:
    disk_id: str
    name: str
    lun: int | None  # None: the OS disk


@dataclass(frozen=True)
class VmDisks:
    location: str
    power: str  # running, deallocated, deallocating, stopped, starting, ...
    disks: tuple[VmDisk, ...]  # the OS disk first, then the data disks by lun


def _name(resource_id: str) -> str:
    return resource_id.rstrip("/").rsplit("/", 1)[-1]


def _group(resource_id: str) -> str:
    parts = resource_id.split("/")
    return parts[parts.index("resourceGroups") + 1] if "resourceGroups" in parts else ""


class DiskOperations:
    def __init__(self, credential: TokenCredential, arm_endpoint: str, subscription_id: str) -> None:
        self._compute, _ = arm_clients(credential, arm_endpoint, subscription_id)
        self._operations = PatchOperations(credential, arm_endpoint, subscription_id)

    def _error(self, resource_id: str, error: Exception) -> Exception:
        return self._operations.classified(resource_id, error) if resource_id else classify(error)

    def _profile(self, resource_id: str) -> tuple[Any, Any]:
        """The VM and its storage profile (a managed VM always has one)."""
        ref = parse_resource_id(resource_id)
        try:
            vm = self._compute.virtual_machines.get(ref.resource_group, ref.name, **_V)
        except HttpResponseError as error:
            raise self._error(resource_id, error) from error
        assert vm.storage_profile is not None, f"{resource_id} has no storage profile"
        return vm, vm.storage_profile

    def vm(self, resource_id: str) -> VmDisks:
        ref = parse_resource_id(resource_id)
        vm, profile = self._profile(resource_id)
        try:
            view = self._compute.virtual_machines.instance_view(ref.resource_group, ref.name, **_V)
        except HttpResponseError as error:
            raise self._error(resource_id, error) from error
        assert profile.os_disk is not None and profile.os_disk.managed_disk is not None
        disks = [VmDisk(str(profile.os_disk.managed_disk.id), str(profile.os_disk.name), None)]
        for data in sorted(profile.data_disks or [], key=lambda d: d.lun):
            if data.managed_disk is not None and data.managed_disk.id:
                disks.append(VmDisk(str(data.managed_disk.id), str(data.name), int(data.lun)))
        codes = [str(s.code or "") for s in view.statuses or []]
        power = next((c.removeprefix("PowerState/") for c in codes if c.startswith("PowerState/")), "unknown")
        return VmDisks(str(vm.location), power, tuple(disks))

    def put_snapshot(self, disk: VmDisk, name: str, location: str, tags: dict[str, str]) -> str:
        """PUT an incremental snapshot of ``disk`` named ``name`` in the disk's resource group; its id."""
        group = _group(disk.disk_id)
        source = CreationData(create_option="Copy", source_resource_id=disk.disk_id)
        body = Snapshot(location=location, tags=tags,
                        properties=SnapshotProperties(incremental=True, creation_data=source))
        try:
            self._compute.snapshots.begin_create_or_update(group, name, body, polling=False, **_V)
        except HttpResponseError as error:
            raise self._error("", error) from error
        return disk.disk_id.rsplit("/disks/", 1)[0] + f"/snapshots/{name}"

    def put_disk_from(self, snapshot_id: str, name: str, location: str, tags: dict[str, str]) -> str:
        group = _group(snapshot_id)
        body = Disk(location=location, tags=tags, properties=DiskProperties(
            creation_data=CreationData(create_option="Copy", source_resource_id=snapshot_id)))
        try:
            self._compute.disks.begin_create_or_update(group, name, body, polling=False, **_V)
        except HttpResponseError as error:
            raise self._error("", error) from error
        return snapshot_id.rsplit("/snapshots/", 1)[0] + f"/disks/{name}"

    def provisioning(self, resource_id: str) -> str | None:
        """A snapshot's or disk's ``provisioningState`` (None: it does not exist)."""
        group, name = _group(resource_id), _name(resource_id)
        operations: Any = self._compute.snapshots if "/snapshots/" in resource_id else self._compute.disks
        try:
            found = operations.get(group, name, **_V)
        except ResourceNotFoundError:
            return None
        except HttpResponseError as error:
            raise self._error("", error) from error
        return str(found.properties.provisioning_state or "") if found.properties else ""

    def attached_to(self, disk_id: str) -> str | None:
        """The VM a disk is attached to (None: detached or gone)."""
        try:
            disk = self._compute.disks.get(_group(disk_id), _name(disk_id), **_V)
        except ResourceNotFoundError:
            return None
        except HttpResponseError as error:
            raise self._error("", error) from error
        return str(disk.managed_by) if disk.managed_by else None

    def delete(self, resource_id: str) -> None:
        """Delete a snapshot or a detached disk; gone already is fine."""
        group, name = _group(resource_id), _name(resource_id)
        operations: Any = self._compute.snapshots if "/snapshots/" in resource_id else self._compute.disks
        try:
            operations.begin_delete(group, name, polling=False, **_V)
        except ResourceNotFoundError:
            return
        except HttpResponseError as error:
            raise self._error("", error) from error

    def deallocate(self, resource_id: str) -> None:
        ref = parse_resource_id(resource_id)
        self._send(resource_id, lambda: self._compute.virtual_machines.begin_deallocate(
            ref.resource_group, ref.name, polling=False, **_V))

    def start(self, resource_id: str) -> None:
        ref = parse_resource_id(resource_id)
        self._send(resource_id, lambda: self._compute.virtual_machines.begin_start(
            ref.resource_group, ref.name, polling=False, **_V))

    def swap(self, resource_id: str, disks: dict[int | None, tuple[str, str]]) -> None:
        """Point the VM's OS disk (key None) and data disks (by lun) at other managed disks (id, name)."""
        ref = parse_resource_id(resource_id)
        vm, profile = self._profile(resource_id)
        assert profile.os_disk is not None and profile.os_disk.managed_disk is not None
        if None in disks:
            profile.os_disk.managed_disk.id, profile.os_disk.name = disks[None]
        for data in profile.data_disks or []:
            if data.lun in disks and data.managed_disk is not None:
                data.managed_disk.id, data.name = disks[data.lun]
        self._send(resource_id, lambda: self._compute.virtual_machines.begin_create_or_update(
            ref.resource_group, ref.name, vm, polling=False, api_version=COMPUTE_API_VERSION))

    def _send(self, resource_id: str, begin: Any) -> None:
        try:
            begin()
        except HttpResponseError as error:
            raise self._error(resource_id, error) from error


__all__ = ["DiskOperations", "TransientArmError", "VmDisk", "VmDisks"]
