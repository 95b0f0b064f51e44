"""What a machine's rollback leaves behind (issue 14): once its disks are restored from the snapshots taken
before its install (shared.safety.restore), the run, the change history, the category's patch inventory
and the people watching are told.

- **The updates fail for the machine's category**: each update the run installed on the machine is
  recorded ``failed`` in the patch inventory (shared.governance.patches_table) with the reason, as a
  failure on the test ring would be. An update already approved or rejected keeps its decision (the
  inventory leaves decided updates alone); the approver sees the rollback in the change history and the
  notification and may revoke the approval.
- **The change history** (``MachineChanges``) gets one row per update taken off, status ``rolled back``,
  at the rollback's time, beside the install's own rows: ``GET /api/machines/{id}/changes`` shows both.
- **A manual rollback** (``POST /api/deployment-runs/{runId}/machines/{machineId}/rollback``) also changes
  the machine's result in the run to ``rolled back`` (the run's counts follow) and queues a new
  ``UpdateRunMachine_CL`` row for it; an automatic one is recorded by the machine's batch like any result.
- **A notification** ``PatchManagement.Machine.RolledBack``, once per rollback.

Idempotent: a retried activity writes the same rows (same keys) and the outbox keeps one notification.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shared.assessment.journal import carried_text
from shared.azure.credentials import credential_for
from shared.deployments.finish import queue_machine_rows, rollback_machine_row
from shared.deployments.governed import categories_by_name, placements
from shared.deployments.runs_table import run_store
from shared.deployments.steps import progress_prefix
from shared.governance.categories import UNCATEGORISED
from shared.governance.evidence import inverted_ms
from shared.governance.evidence_table import change_store
from shared.governance.notifications import EventType, Notification, notify
from shared.governance.patch_refs import PatchRef, ref_of_row
from shared.governance.patches import PatchState
from shared.governance.patches_table import patch_inventory
from shared.model.machines import machine_key, parse_resource_id
from shared.safety.messages import RollbackRecord
from shared.settings import Settings

ROLLED_BACK_STATUS = "rolled back"  # MachineChanges' Status of an update a rollback took off
_INSTALLED = "succeeded"  # UpdateRunProgress_CL's InstallationStatus of an installed update


def installed_updates(row: Mapping[str, Any]) -> list[tuple[PatchRef, dict[str, Any]]]:
    """The updates the run installed on the machine, from the progress rows its row carries."""
    found: dict[PatchRef, dict[str, Any]] = {}
    for step in ("install1", "install2"):
        text = carried_text(row, progress_prefix(step))
        for progress in json.loads(text) if text else []:
            if progress.get("InstallationStatus") != _INSTALLED:
                continue
            ref = ref_of_row(str(progress.get("OSType")), progress)
            if ref is not None:
                found.setdefault(ref, progress)
    return sorted(found.items(), key=lambda item: item[0].key)


def record_rollback(settings: Settings, record: RollbackRecord) -> dict[str, int]:
    """Record a machine's rollback in the run, the change history, the category's inventory and the
    notifications. Answers how many updates were failed and change rows written."""
    store = run_store(settings, credential_for(settings))
    terms = store.terms(record.run_id)
    key = machine_key(record.resource_id)
    row = store.machine(record.run_id, key)
    computer = str(row.get("Computer") or parse_resource_id(record.resource_id).name)
    updates = installed_updates(row)
    category, ring = placements(settings, [record.resource_id]).get(key, (UNCATEGORISED, None))
    known = categories_by_name(settings).get(category.lower()) if category != UNCATEGORISED else None
    failed = 0
    if known is not None:
        inventory = patch_inventory(settings)
        for ref, _ in updates:
            why = f"rolled back on {computer}: {record.reason}"[:1000]
            status = inventory.record_evidence_result(ref, known.name, PatchState.FAILED, why, record.at)
            failed += status.state is PatchState.FAILED
    changes = [_change_row(key, ref, progress, record, category, ring or "") for ref, progress in updates]
    change_store(settings).record(changes)
    if record.manual:
        outcome, finished = store.record_rollback(record.run_id, key, record.reason, record.restored.taken_at,
                                                  record.at)
        queue_machine_rows(settings, credential_for(settings),
                           [rollback_machine_row(terms, finished, outcome, record.at)], record.at)
    told = _notification(record, terms.deployment_name, computer, category, ring, updates)
    notify(settings, told, record.at)
    return {"failedUpdates": failed, "changes": len(changes)}


def _change_row(machine: str, ref: PatchRef, progress: Mapping[str, Any], record: RollbackRecord,
                category: str, ring: str) -> dict[str, Any]:
    """A MachineChanges row for an update the rollback took off (keyed by the rollback's time)."""
    return {
        "PartitionKey": machine, "RowKey": f"{inverted_ms(record.at)}|{ref.table_key}",
        "OsType": ref.os_type.value, "Key": ref.key, "KBID": ref.kb or "", "PackageName": ref.package or "",
        "PackageVersion": ref.version or "", "Title": str(progress.get("UpdateTitle") or ""),
        "Classification": str(progress.get("Classification") or ""), "Status": ROLLED_BACK_STATUS,
        "At": record.at, "RunId": record.run_id, "Deployment": str(progress.get("UpdateRunName") or ""),
        "AuthorizedBy": str(progress.get("AuthorizedBy") or ""), "Category": category, "Ring": ring,
        "Reason": record.reason[:1000],
    }  # fmt: skip


def _notification(record: RollbackRecord, deployment: str, computer: str, category: str, ring: str | None,
                  updates: list[tuple[PatchRef, dict[str, Any]]]) -> Notification:
    data: dict[str, Any] = {
        "runId": record.run_id, "deployment": deployment, "machine": record.resource_id, "computer": computer,
        "reason": record.reason, "restorePoint": record.restored.taken_at, "rolledBackAt": record.at,
        "trigger": "manual" if record.manual else record.trigger,
    }  # fmt: skip
    if category != UNCATEGORISED:
        data["category"] = category
    if ring:
        data["ring"] = ring
    if updates:
        data["patches"] = [{"osType": ref.os_type.value, "key": ref.key} for ref, _ in updates[:100]]
    if record.requested_by:
        data["requestedBy"] = record.requested_by
    subject = f"/deployments/{deployment}/runs/{record.run_id}/machines/{computer}"
    dedup = f"Machine.RolledBack|{record.run_id}|{machine_key(record.resource_id)}|{record.at.isoformat()}"
    return Notification(EventType.MACHINE_ROLLED_BACK, subject, data, dedup)

