"""Recording one machine's assessment: its own partition of the inventory at once, the rest per batch.

What the activities call. The machine's gaps, history and bookkeeping are written in one transaction
(:meth:`UpdateInventory.record_assessment`); its Machines state, reverse-index entries, catalogue
deltas and Log Analytics rows go into the batch's journal (:mod:`shared.assessment.journal`), which
the batch applies at its end. Both writes are idempotent: the same input writes the same entities, and
queues rows with the same ``RecordId``, which the outbox keeps once.

Which ``Update_CL`` rows a scan sends: the first scan of a machine on a UTC day sends every update it
misses (so a search over the last day sees them all), later scans that day only what changed (gaps
opened, updates revised, and gaps closed as ``Not needed``). The ``UpdateSummary_CL`` row goes every
time: it says the machine was assessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from shared.assessment.journal import InventoryJournal, entry_for
from shared.assessment.records import (
    MachineAssessmentSummary,
    failure_summary,
    outcome_error,
    record_from_entity,
    summarize,
    summary_row,
    update_records,
    update_rows,
)
from shared.assessment.updates_table import UpdateInventory, failure_state
from shared.azure.log_outbox import log_outbox
from shared.azure.tables import table_service
from shared.log_tables import UPDATE, UPDATE_SUMMARY
from shared.model.assessment_outcome import AssessmentFailure, AssessmentOutcome
from shared.model.machines import Machine
from shared.settings import Settings

# -- entry points ----------------------------------------------------------------------------


def record_assessment(
    settings: Settings,
    machine: Machine,
    outcome: AssessmentOutcome,
    assessed_at: datetime,
    run_id: str,
    journal: str,
) -> MachineAssessmentSummary:
    """Write the machine's partition, then its entry in the batch's ``journal``. Compliance follows the
    ``COMPLIANCE_CLASSIFICATIONS`` setting. A retry rewrites the same entities and the same entry."""
    records = update_records(machine, outcome, assessed_at)
    summary = summarize(machine, outcome, records, assessed_at, settings.compliance_classifications)
    service = table_service(settings)
    inventory = UpdateInventory(service)
    inventory.ensure()
    scan = inventory.record_assessment(machine, records, summary, run_id, outcome_error(outcome))
    changed = scan.changed_keys
    sent = records if scan.full_state else [r for r in records if r.update_key in changed]
    closed = [record_from_entity(entity, assessed_at) for entity in scan.closed]
    rows = {
        UPDATE.name: update_rows(machine, [*sent, *closed], run_id),
        UPDATE_SUMMARY.name: [summary_row(machine, summary, run_id, outcome_error(outcome))],
    }
    entry = entry_for(machine, assessed_at, scan.machine_state, scan.opened, scan.closed, scan.revised, rows)
    InventoryJournal(service, log_outbox(settings)).put(journal, entry)
    return summary


def apply_journal(settings: Settings, journals: Sequence[str], at: datetime) -> dict[str, int]:
    """Apply finished batches' journals together (each once; again is a no-op)."""
    return InventoryJournal(table_service(settings), log_outbox(settings)).apply(journals, at)


def record_failure(
    settings: Settings, machine: Machine, failure: AssessmentFailure, at: datetime, run_id: str
) -> MachineAssessmentSummary:
    """Record why a machine has no assessment this time, keeping its last good assessment."""
    return record_failures(settings, [(machine, failure)], at, run_id)[0]


def record_failures(
    settings: Settings, failures: Sequence[tuple[Machine, AssessmentFailure]], at: datetime, run_id: str
) -> list[MachineAssessmentSummary]:
    """:func:`record_failure` for many machines: one set of clients and one upload for all of them."""
    if not failures:
        return []
    inventory = UpdateInventory(table_service(settings))
    inventory.ensure()
    # Machines states in transactions per subscription: a listing records hundreds of stopped machines.
    inventory.apply_machine_states(failure_state(m, f, at, run_id) for m, f in failures)
    summaries, rows = [], []
    for machine, failure in failures:
        summary = failure_summary(machine, failure, at)
        summaries.append(summary)
        rows.append(summary_row(machine, summary, run_id, f"{failure.code}: {failure.message}"))
    log_outbox(settings).put(UPDATE_SUMMARY, rows, at)
    return summaries
