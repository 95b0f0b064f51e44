"""Finishing a machine of a deployment run: its result in the run, and its row queued for Log Analytics.

A batch records its ended machines with its next claim (:func:`record_and_claim`: the results, the freed
slots and the next starts in one transaction) and queues their rows at its end from the machines' rows
(:func:`finished_machine_rows`, with the rest its end applies: shared.deployments.steps
``apply_batch_journal``), one outbox transaction per batch instead of one per claim; :func:`finish_machine`
records and queues one machine alone (the reconciler's). Either records a machine once; a retry queues
the stored row again with the same ``RecordId``, which the outbox (shared/azure/log_outbox.py) keeps once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from azure.core.credentials import TokenCredential

from shared.azure.credentials import credential_for
from shared.azure.log_outbox import log_outbox
from shared.deployments.messages import ClaimInput, ClaimResult, StepFailure
from shared.deployments.results import (
    MachineResultStatus,
    run_machine_row,
)
from shared.deployments.runs_table import (
    FINAL_STATES,
    Ending,
    Finished,
    MachineOutcomeRecord,
    RunRecord,
    RunTerms,
    run_store,
    stored_outcome,
)
from shared.log_tables import UPDATE_RUN_MACHINE, record_id
from shared.model.machines import machine_from_json, machine_key
from shared.settings import Settings

# --- finishing ------------------------------------------------------------------------------------


def finish_machine(settings: Settings, run_id: str, resource_id: str, status: MachineResultStatus,
                   reason: str, at: datetime, failure: StepFailure | None) -> MachineOutcomeRecord:
    """Record the machine's result with the counts its install stored, and free its slot."""
    credential = credential_for(settings)
    store = run_store(settings, credential)
    outcome_of = _outcome_of(status, reason, failure)
    done = store.finish(run_id, machine_key(resource_id), outcome_of, at)
    _queue_finished(settings, credential, store.terms(run_id), [(done, at)], at)
    return done.outcome if done.recorded else outcome_of(done.row)


def record_and_claim(settings: Settings, request: ClaimInput) -> ClaimResult:
    """A batch's claim (:meth:`RunStore.claim`): its ended machines recorded and the ones the gate allows
    started, in one transaction. Their rows for Log Analytics are queued at the batch's end
    (:func:`finished_machine_rows`)."""
    credential = credential_for(settings)
    store = run_store(settings, credential)
    endings = [
        Ending(ended.resource_id, _outcome_of(MachineResultStatus(ended.status), ended.reason, ended.failure,
                                              ended.safety()),
               ended.at or request.at, ended.outputs)
        for ended in request.finished
    ]  # fmt: skip
    ids = [*request.resource_ids, *(ending.resource_id for ending in endings)]
    claim = store.claim(request.run_id, request.resource_ids, {rid: machine_key(rid) for rid in ids},
                        request.at, batch=request.batch, finished=endings, key_range=request.key_range)
    return ClaimResult(start=claim.start, stop_reason=claim.stop_reason, not_started=claim.not_started,
                       running=claim.running)


def _outcome_of(
    status: MachineResultStatus, reason: str, failure: StepFailure | None,
    safety: Mapping[str, Any] | None = None,
) -> Callable[[Mapping[str, Any]], MachineOutcomeRecord]:
    """The result a machine records: its status and why, with the counts its install stored in its row."""

    def outcome(row: Mapping[str, Any]) -> MachineOutcomeRecord:
        return MachineOutcomeRecord(
            status=status, reason=reason, installed=int(row.get("Installed", 0)),
            failed=int(row.get("FailedUpdates", 0)), pending=int(row.get("Pending", 0)),
            excluded=int(row.get("Excluded", 0)), not_selected=int(row.get("NotSelected", 0)),
            reboot_status=str(row.get("RebootStatus", "")),
            error_code=failure.code if failure else str(row.get("ErrorCode", "")),
            error_message=failure.message if failure else str(row.get("ErrorMessage", "")),
            hint=failure.hint if failure else "", **(safety or {}),
        )  # fmt: skip

    return outcome


def _queue_finished(settings: Settings, credential: TokenCredential, run: RunTerms,
                    done: Sequence[tuple[Finished, datetime]], at: datetime) -> None:
    """Queue the ``UpdateRunMachine_CL`` rows of machines just recorded (each with the time it ended) or
    recorded before: a retried call that may not have queued them queues the stored rows again (same
    RecordId: the outbox keeps the first)."""
    queue_machine_rows(settings, credential, [
        _machine_log_row(run, finished.row, finished.outcome,
                         ended if finished.recorded else finished.row.get("FinishedAt") or ended)
        for finished, ended in done
    ], at)  # fmt: skip


# --- the machines' results in Log Analytics -------------------------------------------------------


def finished_machine_rows(run: RunTerms, rows: Sequence[Mapping[str, Any]],
                          at: datetime) -> list[dict[str, Any]]:
    """The ``UpdateRunMachine_CL`` rows of the machines of ``rows`` that started and have their result
    (the ones a batch's claims recorded), each as its stored row holds it; for a batch's end. The ones
    that never started are queued when the run completes (:func:`record_never_started`)."""
    return [
        _machine_log_row(run, row, stored_outcome(row), row.get("FinishedAt") or at) for row in rows
        if row.get("StartedAt") and row["State"] in FINAL_STATES
    ]  # fmt: skip


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
        _machine_log_row(run, row, stored_outcome(row), row.get("FinishedAt") or at) for row in never
    ], at)  # fmt: skip


def queue_machine_rows(settings: Settings, credential: TokenCredential,
                      rows: Sequence[dict[str, Any]], at: datetime) -> int:
    """Queue ``UpdateRunMachine_CL`` rows in the outbox; returns how many were new there."""
    return log_outbox(settings, credential).put(UPDATE_RUN_MACHINE, rows, at)


def rollback_machine_row(run: RunTerms, row: Mapping[str, Any], outcome: MachineOutcomeRecord,
                         at: datetime) -> dict[str, Any]:
    """The ``UpdateRunMachine_CL`` row of a machine rolled back on request after its run: the machine's
    result again, now ``rolled back``, with a RecordId of its own (the latest row per run and machine is
    its result)."""
    written = _machine_log_row(run, row, outcome, at)
    written["RecordId"] = record_id(UPDATE_RUN_MACHINE.name, run.run_id, str(row["ResourceId"]), "rollback",
                                    at.isoformat())
    return written


def _machine_log_row(run: RunRecord | RunTerms, row: Mapping[str, Any], outcome: MachineOutcomeRecord,
                     finished_at: datetime) -> dict[str, Any]:
    """A machine's ``UpdateRunMachine_CL`` row from its row in the run; the machine as discovery saw
    it when the row keeps it (queued machines), else its name and resource id only."""
    resource_id = str(row["ResourceId"])
    machine = machine_from_json(str(row["Machine"])) if row.get("Machine") else None
    computer = machine.computer_name if machine else str(row.get("Computer") or "")
    started_at = row.get("StartedAt")
    return run_machine_row(
        run.run_id, run.deployment_name, resource_id, computer, machine.os_type if machine else None, outcome,
        started_at if isinstance(started_at, datetime) else None, finished_at, release=run.definition.release,
        health=outcome.health, rollback=outcome.rollback, restore_point=outcome.restore_point,
    )  # fmt: skip
