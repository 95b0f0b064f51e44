"""Pre-patch snapshots and the rollback from them (issue 14): the steps a machine's orchestration polls,
each advancing on what Azure shows so that a retried call goes on where the last one got.

Snapshot step: ``take_snapshots`` PUTs one incremental snapshot per disk (the OS disk with ``snapshot:
os``; every data disk too with ``all``), named after the disk and the run so a retry PUTs the same ones,
and records the restore point ``taking``; ``check_snapshots`` answers once every snapshot's
``provisioningState`` is ``Succeeded`` (the point is ``taken`` then, and expires after the retention).

Rollback stages (``Stage`` on the point): ``deallocate`` (sent once, and again while the VM still runs),
``disks`` (a new disk from each snapshot), ``swap`` (the VM's OS disk and data disks by lun pointed at
the new disks: allowed only deallocated), ``start``, then ``done``: the point is ``restored`` and the
replaced disks are recorded with their expiry (the restore's time plus the retention). Nothing is
deleted here.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from shared.azure.credentials import credential_for
from shared.azure.disks import DiskOperations, VmDisk
from shared.model.machines import machine_key, parse_resource_id
from shared.safety.messages import (
    PointSummary,
    RestoreSummary,
    RollbackAnswer,
    RollbackInput,
    SnapshotAnswer,
    SnapshotInput,
)
from shared.safety.policy import SnapshotScope
from shared.safety.restore_points import DiskSnapshot, PointState, ReplacedDisk, RestorePoint, restore_points
from shared.settings import Settings

# Azure resource names of disks and snapshots: 1-80 characters, letters, digits, '_', '.', '-'
# (Microsoft.Compute naming rules); a disk's name keeps its start and gains a suffix of the run's digest.
MAX_NAME_CHARS = 80
_SUFFIX_CHARS = 14  # "-pre-" or "-rb-" and 8 hex digits, with room


def resource_name(disk_name: str, run_id: str, kind: str) -> str:
    """``{disk}-{kind}-{digest of the run}``, cut to Azure's 80 characters and its characters."""
    digest = hashlib.sha256(run_id.lower().encode()).hexdigest()[:8]
    allowed = "".join(c if c.isalnum() or c in "_.-" else "-" for c in disk_name)
    base = allowed[: MAX_NAME_CHARS - _SUFFIX_CHARS]
    return f"{base}-{kind}-{digest}"


def _tags(run_id: str, resource_id: str, disk: str, expires: datetime) -> dict[str, str]:
    # Tag values are at most 256 characters (Azure resource tags): a run id and a disk name fit; the
    # machine is named by its key, not its resource id.
    return {"patchRun": run_id[:256], "patchMachine": machine_key(resource_id)[:256],
            "patchDisk": disk[:256], "patchExpires": expires.date().isoformat()}


def _operations(settings: Settings, resource_id: str) -> DiskOperations:
    subscription = parse_resource_id(resource_id).subscription_id
    return DiskOperations(credential_for(settings), settings.arm_endpoint, subscription)


# --- the snapshot step --------------------------------------------------------------------------------


def take_snapshots(settings: Settings, request: SnapshotInput, at: datetime) -> SnapshotAnswer:
    operations = _operations(settings, request.resource_id)
    vm = operations.vm(request.resource_id)
    disks: list[VmDisk] = [d for d in vm.disks if d.lun is None or request.scope is SnapshotScope.ALL]
    expires = at + timedelta(days=request.retention_days)
    taken = []
    for disk in disks:
        name = resource_name(disk.name, request.run_id, "pre")
        tags = _tags(request.run_id, request.resource_id, disk.name, expires)
        snapshot_id = operations.put_snapshot(disk, name, vm.location, tags)
        taken.append(DiskSnapshot(disk.disk_id, snapshot_id, disk.lun))
    # The expiry is set from the start, so that snapshots that never complete are cleaned up too.
    point = RestorePoint(machine_key(request.resource_id), request.run_id, request.resource_id,
                         request.retention_days, tuple(taken), expires_at=expires)
    store = restore_points(settings)
    kept = store.get(point.machine_key, point.run_id)
    if kept is None or kept.state is PointState.TAKING:
        store.put(point)
    return SnapshotAnswer(token="snapshots", in_progress=True)


def check_snapshots(settings: Settings, request: SnapshotInput, at: datetime) -> SnapshotAnswer:
    store = restore_points(settings)
    point = store.get(machine_key(request.resource_id), request.run_id)
    if point is None:
        return SnapshotAnswer(failure="the restore point was not recorded")
    if point.state is not PointState.TAKING and point.taken_at and point.expires_at:
        return _summary(point)
    operations = _operations(settings, request.resource_id)
    states = [operations.provisioning(s.snapshot_id) for s in point.snapshots]
    failed = [s.snapshot_id for s, state in zip(point.snapshots, states, strict=True)
              if state in ("Failed", None)]
    if failed:
        return SnapshotAnswer(failure=f"snapshot {failed[0].rsplit('/', 1)[-1]} failed or is missing")
    if any(state != "Succeeded" for state in states):
        return SnapshotAnswer(token="snapshots", in_progress=True)
    point = store.change(point, state=PointState.TAKEN, taken_at=at,
                         expires_at=at + timedelta(days=point.retention_days))
    return _summary(point)


def _summary(point: RestorePoint) -> SnapshotAnswer:
    assert point.taken_at is not None and point.expires_at is not None
    return SnapshotAnswer(point=PointSummary(taken_at=point.taken_at, expires_at=point.expires_at,
                                             snapshots=tuple(s.snapshot_id for s in point.snapshots)))


# --- the rollback -------------------------------------------------------------------------------------


class RollbackRefused(ValueError):
    """The machine cannot be rolled back from this run's point (none, expired, not taken)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def usable_point(settings: Settings, run_id: str, resource_id: str, now: datetime) -> RestorePoint:
    """The point a rollback of the machine in the run would restore, or RollbackRefused saying why not."""
    point = restore_points(settings).get(machine_key(resource_id), run_id)
    if point is None:
        raise RollbackRefused("NoRestorePoint", f"no snapshot was taken of {resource_id} in run {run_id}")
    if point.state is PointState.TAKING or point.taken_at is None:
        raise RollbackRefused("NoRestorePoint", f"the snapshots of run {run_id} were never completed")
    if point.expired(now):
        raise RollbackRefused("RestorePointExpired", f"the snapshots of run {run_id} expired at "
                              f"{point.expires_at:%Y-%m-%d %H:%M} UTC (kept {point.retention_days} days)")
    return point


def start_rollback(settings: Settings, request: RollbackInput, at: datetime) -> RollbackAnswer:
    try:
        point = usable_point(settings, request.run_id, request.resource_id, at)
    except RollbackRefused as refused:
        return RollbackAnswer(failure=str(refused))
    if point.state is PointState.RESTORED and point.stage == "done":
        return RollbackAnswer(restored=_restored(point))
    if point.state is not PointState.RESTORING:
        point = restore_points(settings).change(point, state=PointState.RESTORING, stage="deallocate")
    if point.stage == "deallocate":
        _operations(settings, request.resource_id).deallocate(request.resource_id)
    return RollbackAnswer(token="rollback", in_progress=True)


def check_rollback(settings: Settings, request: RollbackInput, at: datetime) -> RollbackAnswer:
    """One stage forward when Azure shows the last one done (module docstring)."""
    store = restore_points(settings)
    point = store.get(machine_key(request.resource_id), request.run_id)
    if point is None:
        return RollbackAnswer(failure="the restore point is gone")
    if point.stage == "done":
        return RollbackAnswer(restored=_restored(point))
    operations = _operations(settings, request.resource_id)
    vm = operations.vm(request.resource_id)
    stage = point.stage or "deallocate"
    if stage == "deallocate":
        if vm.power != "deallocated":
            if vm.power not in ("deallocating", "stopping"):
                operations.deallocate(request.resource_id)
            return RollbackAnswer(token="rollback", in_progress=True)
        snapshots = []
        for snapshot in point.snapshots:
            disk_name = snapshot.disk_id.rsplit("/", 1)[-1]
            name = resource_name(disk_name, request.run_id, "rb")
            tags = _tags(request.run_id, request.resource_id, disk_name, point.expires_at or at)
            restored = operations.put_disk_from(snapshot.snapshot_id, name, vm.location, tags)
            snapshots.append(DiskSnapshot(snapshot.disk_id, snapshot.snapshot_id, snapshot.lun, restored))
        store.change(point, snapshots=tuple(snapshots), stage="disks")
        return RollbackAnswer(token="rollback", in_progress=True)
    if stage == "disks":
        states = [operations.provisioning(s.restored_disk_id) for s in point.snapshots]
        if any(state in ("Failed", None) for state in states):
            return RollbackAnswer(failure="a disk could not be created from its snapshot")
        if any(state != "Succeeded" for state in states):
            return RollbackAnswer(token="rollback", in_progress=True)
        operations.swap(request.resource_id, {
            s.lun: (s.restored_disk_id, s.restored_disk_id.rsplit("/", 1)[-1]) for s in point.snapshots})
        store.change(point, stage="swap")
        return RollbackAnswer(token="rollback", in_progress=True)
    if stage == "swap":
        attached = {d.lun: d.disk_id.lower() for d in vm.disks}
        if any(attached.get(s.lun) != s.restored_disk_id.lower() for s in point.snapshots):
            return RollbackAnswer(token="rollback", in_progress=True)
        operations.start(request.resource_id)
        store.change(point, stage="start")
        return RollbackAnswer(token="rollback", in_progress=True)
    if stage == "start":
        if vm.power != "running":
            if vm.power == "deallocated":
                operations.start(request.resource_id)
            return RollbackAnswer(token="rollback", in_progress=True)
        expires = at + timedelta(days=point.retention_days)
        replaced = tuple(ReplacedDisk(s.disk_id, expires) for s in point.snapshots)
        point = store.change(point, stage="done", state=PointState.RESTORED, restored_at=at,
                             replaced=point.replaced + replaced)
        return RollbackAnswer(restored=_restored(point))
    return RollbackAnswer(failure=f"unknown rollback stage {stage!r}")


def _restored(point: RestorePoint) -> RestoreSummary:
    assert point.taken_at is not None
    return RestoreSummary(taken_at=point.taken_at, disks=tuple(s.restored_disk_id for s in point.snapshots),
                          replaced=tuple(s.disk_id for s in point.snapshots))


__all__ = ["RollbackRefused", "check_rollback", "check_snapshots", "start_rollback", "take_snapshots",
           "usable_point"]
