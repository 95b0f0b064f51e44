"""Restore points: the snapshots taken of a machine's disks right before its install in a run, and what a
rollback from them replaced (issue 14). One ``RollbackPoints`` entity per machine and run: PartitionKey the
machine's key, RowKey the run id, so a machine's points are one partition and a run's point of a machine
one point read.

A point is ``taking`` while its snapshots are created, ``taken`` once they all succeeded (from then until
``ExpiresAt`` it can restore the machine), ``restoring`` during a rollback (``Stage`` says how far it got,
so a retried step goes on from there) and ``restored`` after. The disks a rollback replaced are kept,
detached, until their own expiry (the restore's time plus the retention), never deleted at once: the
cleanup timer (shared.safety.cleanup) deletes snapshots and replaced disks past their time, then the point.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient, UpdateMode

from shared.azure.tables import ensure_table, is_table_key, table_service
from shared.settings import Settings

TABLE = "RollbackPoints"


class PointState(StrEnum):
    TAKING = "taking"
    TAKEN = "taken"
    RESTORING = "restoring"
    RESTORED = "restored"


@dataclass(frozen=True)
class DiskSnapshot:
    """One disk of the machine and its snapshot; ``lun`` None for the OS disk."""

    disk_id: str
    snapshot_id: str
    lun: int | None = None
    restored_disk_id: str = ""  # the disk a rollback created from the snapshot

    def to_json(self) -> dict[str, Any]:
        return {"diskId": self.disk_id, "snapshotId": self.snapshot_id, "lun": self.lun,
                "restoredDiskId": self.restored_disk_id}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> DiskSnapshot:
        return cls(str(body["diskId"]), str(body["snapshotId"]), body.get("lun"),
                   str(body.get("restoredDiskId") or ""))


@dataclass(frozen=True)
class ReplacedDisk:
    disk_id: str
    expires_at: datetime
    deleted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"diskId": self.disk_id, "expiresAt": self.expires_at.isoformat(), "deleted": self.deleted}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ReplacedDisk:
        return cls(str(body["diskId"]), datetime.fromisoformat(str(body["expiresAt"])),
                   bool(body.get("deleted")))


@dataclass(frozen=True)
class RestorePoint:
    machine_key: str
    run_id: str
    resource_id: str
    retention_days: int
    snapshots: tuple[DiskSnapshot, ...]
    state: PointState = PointState.TAKING
    taken_at: datetime | None = None
    expires_at: datetime | None = None
    stage: str = ""
    restored_at: datetime | None = None
    replaced: tuple[ReplacedDisk, ...] = field(default=())
    snapshots_deleted: bool = False

    def expired(self, now: datetime) -> bool:
        return self.snapshots_deleted or (self.expires_at is not None and now >= self.expires_at)

    def entity(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "PartitionKey": self.machine_key, "RowKey": self.run_id, "ResourceId": self.resource_id,
            "RetentionDays": self.retention_days, "State": self.state.value, "Stage": self.stage,
            "Snapshots": json.dumps([s.to_json() for s in self.snapshots]),
            "Replaced": json.dumps([r.to_json() for r in self.replaced]),
            "SnapshotsDeleted": self.snapshots_deleted,
        }  # fmt: skip
        for name, value in (("TakenAt", self.taken_at), ("ExpiresAt", self.expires_at),
                            ("RestoredAt", self.restored_at)):
            if value is not None:
                values[name] = value
        return values


def _point(entity: Any) -> RestorePoint:
    return RestorePoint(
        machine_key=str(entity["PartitionKey"]), run_id=str(entity["RowKey"]),
        resource_id=str(entity["ResourceId"]), retention_days=int(entity.get("RetentionDays", 1)),
        snapshots=tuple(DiskSnapshot.from_json(s) for s in json.loads(entity.get("Snapshots") or "[]")),
        state=PointState(entity.get("State") or PointState.TAKING.value), taken_at=entity.get("TakenAt"),
        expires_at=entity.get("ExpiresAt"), stage=str(entity.get("Stage") or ""),
        restored_at=entity.get("RestoredAt"),
        replaced=tuple(ReplacedDisk.from_json(r) for r in json.loads(entity.get("Replaced") or "[]")),
        snapshots_deleted=bool(entity.get("SnapshotsDeleted", False)),
    )  # fmt: skip


class RestorePoints:
    def __init__(self, service: TableServiceClient) -> None:
        self._service = service
        self._table = service.get_table_client(TABLE)

    def ensure(self) -> None:
        self._table = ensure_table(self._service, TABLE)

    def get(self, machine_key: str, run_id: str) -> RestorePoint | None:
        if not (is_table_key(machine_key) and is_table_key(run_id)):
            return None
        try:
            return _point(self._table.get_entity(machine_key, run_id))
        except ResourceNotFoundError:
            return None

    def put(self, point: RestorePoint) -> RestorePoint:
        self._table.upsert_entity(point.entity(), mode=UpdateMode.REPLACE)
        return point

    def change(self, point: RestorePoint, **changes: Any) -> RestorePoint:
        return self.put(replace(point, **changes))

    def delete(self, point: RestorePoint) -> None:
        self._table.delete_entity(point.machine_key, point.run_id)

    def due(self, now: datetime) -> Iterator[RestorePoint]:
        """Points whose snapshots expired (a scan of the table: it holds the retention's points only)."""
        for entity in self._table.query_entities("ExpiresAt le @now", parameters={"now": now}):
            yield _point(entity)

    def of_machine(self, machine_key: str) -> list[RestorePoint]:
        if not is_table_key(machine_key):
            return []
        rows = self._table.query_entities("PartitionKey eq @p", parameters={"p": machine_key})
        return [_point(e) for e in rows]


def restore_points(settings: Settings) -> RestorePoints:
    store = RestorePoints(table_service(settings))
    store.ensure()
    return store
