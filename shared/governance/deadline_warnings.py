"""The daily ``PatchManagement.Deadline.Approaching`` notifications (rules: shared.governance.deadlines).

The daily compliance run audits the fleet a page per activity call (functions/compliance_audit.py); each
page's warnings are kept in the ``DeadlineWarnings`` table (PartitionKey the audited day, one row per
page, category and update: a retried page writes the same rows again), and the run's last activity
(:func:`notify_approaching`) merges the day's rows into one warning per category and update and notifies
each once (its dedup key: category, update, deadline date), then deletes the day's rows. Nothing but
counts travels through the orchestration.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from shared.azure.tables import MAX_TRANSACTION_ENTITIES, ensure_table, table_service
from shared.governance.deadlines import DeadlineWarning, merge
from shared.governance.notifications import EventType, Notification, NotificationError, notify
from shared.governance.patch_refs import parse_patch_ref
from shared.settings import Settings

log = logging.getLogger(__name__)

WARNINGS_TABLE = "DeadlineWarnings"
# A gap whose classification the inventory does not hold (the schema needs a value).
UNCLASSIFIED = "Unclassified"


def page_id(token: str | None) -> str:
    """A page of the daily run, named by the continuation token it was read from (None: the first)."""
    return hashlib.sha256((token or "").encode()).hexdigest()[:16]


class DeadlineWarningStore:
    def __init__(self, service: TableServiceClient) -> None:
        self._table: TableClient = ensure_table(service, WARNINGS_TABLE)

    def record_page(self, day: date, page: str, warnings: Sequence[DeadlineWarning]) -> int:
        """Keep a page's warnings for ``day`` (upserts: a retried page writes the same rows)."""
        rows = [_row(day, page, w) for w in warnings]
        for start in range(0, len(rows), MAX_TRANSACTION_ENTITIES):
            chunk = rows[start:start + MAX_TRANSACTION_ENTITIES]
            self._table.submit_transaction([("upsert", row, {"mode": UpdateMode.REPLACE}) for row in chunk])
        return len(rows)

    def day(self, day: date) -> list[dict[str, Any]]:
        return [dict(r) for r in self._table.query_entities("PartitionKey eq @p",
                                                             parameters={"p": day.isoformat()})]

    def warnings(self, day: date) -> list[DeadlineWarning]:
        """The fleet's warnings for ``day``: the pages' rows merged."""
        return merge(_warning(row) for row in self.day(day))

    def forget(self, day: date) -> None:
        keys = [{"PartitionKey": r["PartitionKey"], "RowKey": r["RowKey"]} for r in self.day(day)]
        for start in range(0, len(keys), MAX_TRANSACTION_ENTITIES):
            chunk = keys[start:start + MAX_TRANSACTION_ENTITIES]
            self._table.submit_transaction([("delete", key) for key in chunk])


def _row(day: date, page: str, w: DeadlineWarning) -> dict[str, Any]:
    digest = hashlib.sha256(f"{w.category.lower()}|{w.ref.table_key}".encode()).hexdigest()[:32]
    return {
        "PartitionKey": day.isoformat(), "RowKey": f"{page}|{digest}", "Category": w.category,
        "OsType": w.ref.os_type.value, "Key": w.ref.key, "Classification": w.classification,
        "Title": w.title, "Deadline": w.deadline, "MachinesMissing": w.machines_missing,
        "Machines": json.dumps(list(w.machines)),
    }  # fmt: skip


def _warning(row: dict[str, Any]) -> DeadlineWarning:
    return DeadlineWarning(
        category=str(row["Category"]), ref=parse_patch_ref(str(row["OsType"]), str(row["Key"])),
        classification=str(row.get("Classification") or ""), title=str(row.get("Title") or ""),
        deadline=row["Deadline"], machines_missing=int(row["MachinesMissing"]),
        machines=tuple(json.loads(str(row.get("Machines") or "[]"))),
    )  # fmt: skip


def deadline_store(settings: Settings) -> DeadlineWarningStore:
    return DeadlineWarningStore(table_service(settings))


def deadline_notification(warning: DeadlineWarning, as_of: datetime) -> Notification:
    ref = warning.ref
    data = {
        "category": warning.category, "osType": ref.os_type.value, "key": ref.key,
        "classification": warning.classification or UNCLASSIFIED, "deadline": warning.deadline,
        "daysLeft": warning.days_left(as_of), "machinesMissing": warning.machines_missing,
        "title": warning.title or None, "machines": list(warning.machines),
    }  # fmt: skip
    return Notification(EventType.DEADLINE_APPROACHING,
                        f"/categories/{warning.category}/patches/{ref.os_type.value}/{ref.key}",
                        {k: v for k, v in data.items() if v is not None}, warning.dedup_key)


def notify_approaching(settings: Settings, day: date, as_of: datetime, at: datetime) -> int:
    """Notify the day's warnings (each once per dedup key), then forget them; returns how many were new.
    Raises when the outbox cannot be written (the activity is retried: what was sent is not sent again)."""
    store = deadline_store(settings)
    new = 0
    for warning in store.warnings(day):
        try:
            notification = deadline_notification(warning, as_of)
        except NotificationError as error:  # a value the schema refuses: the others go, the log says why
            log.error("no Deadline.Approaching for %s in %s: %s", warning.ref.key, warning.category, error)
            continue
        new += notify(settings, notification, at)
    store.forget(day)
    return new
