"""Finishing a machine of a deployment run: its result in the run, and its row queued for Log Analytics.

:func:`finish_machine` records a machine once (:meth:`RunStore.finish_machine`); a retry queues the stored
row again with the same ``RecordId``, which the outbox (shared/azure/log_outbox.py) keeps once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from azure.core.credentials import TokenCredential

from shared.azure.credentials import credential_for
from shared.azure.log_outbox import log_outbox
from shared.deployments.messages import (
    StepFailure,
)
from shared.deployments.results import (
    MachineResultStatus,
    run_machine_row,
)
from shared.deployments.runs_table import FINAL_STATES, MachineOutcomeRecord, RunRecord, run_store
from shared.log_tables import UPDATE_RUN_MACHINE
from shared.model.machines import machine_from_json, machine_key
from shared.settings import Settings

# --- finishing ------------------------------------------------------------------------------------


def finish_machine(settings: Settings, run_id: str, resource_id: str, status: MachineResultStatus,
                   reason: str, at: datetime, failure: StepFailure | None) -> MachineOutcomeRecord:
    """Record the machine's result with the counts its install stored, and free its slot."""
    credential = credential_for(settings)
    store = run_store(settings, credential)
    key = machine_key(resource_id)
    row = store.machine(run_id, key)
    outcome = MachineOutcomeRecord(
        status=status, reason=reason, installed=int(row.get("Installed", 0)),
        failed=int(row.get("FailedUpdates", 0)), pending=int(row.get("Pending", 0)),
        excluded=int(row.get("Excluded", 0)), not_selected=int(row.get("NotSelected", 0)),
        reboot_status=str(row.get("RebootStatus", "")),
        error_code=failure.code if failure else str(row.get("ErrorCode", "")),
        error_message=failure.message if failure else str(row.get("ErrorMessage", "")),
        hint=failure.hint if failure else "",
    )  # fmt: skip
    run = store.get_run(run_id)
    if store.finish_machine(run_id, key, outcome, at):
        log_row = _machine_log_row(run, row, outcome, at)
    else:
        # Finished before: a retried call that may not have queued its row; queue what the store
        # holds (same RecordId: the outbox keeps the first).
        stored = store.machine(run_id, key)
        log_row = _machine_log_row(run, stored, _stored_outcome(stored), stored.get("FinishedAt") or at)
    queue_machine_rows(settings, credential, [log_row], at)
    return outcome


# --- the machines' results in Log Analytics -------------------------------------------------------


def record_never_started(settings: Settings, run_id: str, at: datetime) -> int:
    """At the end of a run: queue the ``UpdateRunMachine_CL`` rows of every machine the gate recorded
    as not started (error budget, window closing, cancelled); :meth:`RunStore.claim` wrote them and
    queues no rows. Returns the number of rows newly queued (the run's last sender call sends them).

    Done once, when the run completes, rather than by each claim: a claim retried after it failed
    would no longer list those machines, and their rows would be lost. Settled machines
    (batch -1) were queued when the run resolved its targets."""
    credential = credential_for(settings)
    store = run_store(settings, credential)
    never = [
        row for row in store.machines(run_id)
        if int(row.get("Batch", -1)) >= 0 and not row.get("StartedAt") and row["State"] in FINAL_STATES
    ]  # fmt: skip
    if not never:
        return 0
    run = store.get_run(run_id)
    return queue_machine_rows(settings, credential, [
        _machine_log_row(run, row, _stored_outcome(row), row.get("FinishedAt") or at) for row in never
    ], at)  # fmt: skip


def queue_machine_rows(settings: Settings, credential: TokenCredential,
                      rows: Sequence[dict[str, Any]], at: datetime) -> int:
    """Queue ``UpdateRunMachine_CL`` rows in the outbox; returns how many were new there."""
    return log_outbox(settings, credential).put(UPDATE_RUN_MACHINE, rows, at)


def _machine_log_row(run: RunRecord, row: Mapping[str, Any], outcome: MachineOutcomeRecord,
                     finished_at: datetime) -> dict[str, Any]:
    """A machine's ``UpdateRunMachine_CL`` row from its row in the run; the machine as discovery saw
    it when the row keeps it (queued machines), else its name and resource id only."""
    resource_id = str(row["ResourceId"])
    machine = machine_from_json(str(row["Machine"])) if row.get("Machine") else None
    computer = machine.computer_name if machine else str(row.get("Computer") or "")
    started_at = row.get("StartedAt")
    return run_machine_row(
        run.run_id, run.deployment_name, resource_id, computer, machine.os_type if machine else None, outcome,
        started_at if isinstance(started_at, datetime) else None, finished_at,
    )  # fmt: skip


def _stored_outcome(row: Mapping[str, Any]) -> MachineOutcomeRecord:
    """The result a finished machine's row holds (the columns RunStore writes for an outcome)."""
    return MachineOutcomeRecord(
        status=MachineResultStatus(row["State"]), reason=str(row.get("Reason") or ""),
        installed=int(row.get("Installed", 0)), failed=int(row.get("FailedUpdates", 0)),
        pending=int(row.get("Pending", 0)), excluded=int(row.get("Excluded", 0)),
        not_selected=int(row.get("NotSelected", 0)), reboot_status=str(row.get("RebootStatus") or ""),
        error_code=str(row.get("ErrorCode") or ""), error_message=str(row.get("ErrorMessage") or ""),
        hint=str(row.get("Hint") or ""),
    )  # fmt: skip
