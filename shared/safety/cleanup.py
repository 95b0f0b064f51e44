"""The daily cleanup of restore points (issue 14): snapshots past their retention are deleted, and the disks
a rollback replaced once their own expiry (the restore's time plus the retention) has passed; a point
whose snapshots and replaced disks are all gone is deleted. A replaced disk attached to a VM again (an
operator swapped it back) is never deleted: it is left, and said so.

Idempotent: a deleted snapshot or disk is gone already on the next pass (Azure answers 404, taken as done).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from shared.azure.credentials import credential_for
from shared.azure.disks import DiskOperations
from shared.model.machines import parse_resource_id
from shared.safety.restore_points import RestorePoint, restore_points
from shared.settings import Settings


@dataclass(frozen=True)
class CleanupCounts:
    points: int = 0  # points looked at
    snapshots_deleted: int = 0
    disks_deleted: int = 0
    disks_kept_attached: int = 0
    points_deleted: int = 0

    def to_json(self) -> dict[str, int]:
        return {"points": self.points, "snapshotsDeleted": self.snapshots_deleted,
                "disksDeleted": self.disks_deleted, "disksKeptAttached": self.disks_kept_attached,
                "pointsDeleted": self.points_deleted}


def clean_expired(settings: Settings, now: datetime) -> dict[str, int]:
    store = restore_points(settings)
    counts = CleanupCounts()
    for point in list(store.due(now)):
        counts = replace(counts, points=counts.points + 1)
        operations = DiskOperations(credential_for(settings), settings.arm_endpoint,
                                    parse_resource_id(point.resource_id).subscription_id)
        counts, point = _clean(operations, point, now, counts)
        if point.snapshots_deleted and all(r.deleted for r in point.replaced):
            store.delete(point)
            counts = replace(counts, points_deleted=counts.points_deleted + 1)
        else:
            store.put(point)
    return counts.to_json()


def _clean(operations: DiskOperations, point: RestorePoint, now: datetime,
           counts: CleanupCounts) -> tuple[CleanupCounts, RestorePoint]:
    if not point.snapshots_deleted:
        for snapshot in point.snapshots:
            operations.delete(snapshot.snapshot_id)
        counts = replace(counts, snapshots_deleted=counts.snapshots_deleted + len(point.snapshots))
        point = replace(point, snapshots_deleted=True)
    replaced = []
    for disk in point.replaced:
        if disk.deleted or now < disk.expires_at:
            replaced.append(disk)
        elif operations.attached_to(disk.disk_id):
            counts = replace(counts, disks_kept_attached=counts.disks_kept_attached + 1)
            replaced.append(replace(disk, deleted=True))  # in use again: no longer ours to delete
        else:
            operations.delete(disk.disk_id)
            counts = replace(counts, disks_deleted=counts.disks_deleted + 1)
            replaced.append(replace(disk, deleted=True))
    return counts, replace(point, replaced=tuple(replaced))
