"""Messages between a machine's orchestration and the snapshot and rollback activities (issue 14), and
the record a rollback leaves (shared.deployments.rollback_record). Small: ids, times, a token."""

from __future__ import annotations

from datetime import datetime

from shared.messages import Message
from shared.safety.policy import SnapshotScope


class SnapshotInput(Message):
    run_id: str
    resource_id: str
    scope: SnapshotScope
    retention_days: int
    token: str | None = None
    at: datetime | None = None


class PointSummary(Message):
    taken_at: datetime
    expires_at: datetime
    snapshots: tuple[str, ...]


class SnapshotAnswer(Message):
    token: str | None = None
    in_progress: bool = False
    point: PointSummary | None = None
    failure: str | None = None


class RollbackInput(Message):
    run_id: str
    resource_id: str
    reason: str = ""
    token: str | None = None
    at: datetime | None = None


class RestoreSummary(Message):
    taken_at: datetime  # when the snapshots restored were taken
    disks: tuple[str, ...]  # the disks created from them, now the machine's
    replaced: tuple[str, ...]  # the disks they replaced, kept until their expiry


class RollbackAnswer(Message):
    token: str | None = None
    in_progress: bool = False
    restored: RestoreSummary | None = None
    failure: str | None = None


class RollbackRecord(Message):
    """What record_rollback writes down (shared.deployments.rollback_record)."""

    run_id: str
    resource_id: str
    reason: str
    manual: bool = False
    requested_by: str | None = None
    trigger: str = "health"  # health | install (a failed install under onHealthOrInstallFailure) | manual
    restored: RestoreSummary
    at: datetime
