"""Recording one machine's assessment: the inventory in Table Storage, then the Log Analytics rows
queued in the outbox (shared/azure/log_outbox.py), which the orchestration's sender uploads.

What the orchestration's activities call. Both writes are idempotent: the same input writes the
same entities, and queues rows with the same ``RecordId``, which the outbox keeps once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

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
from shared.assessment.updates_table import UpdateInventory
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
) -> MachineAssessmentSummary:
    """Write the inventory, then queue the Log Analytics rows. Compliance follows the
    ``COMPLIANCE_CLASSIFICATIONS`` setting. A retry rewrites the same entities,
    and the same rows with the same RecordIds (the Not-needed rows included: they are the
    updates this very assessment closed, read back from the inventory)."""
    records = update_records(machine, outcome, assessed_at)
    summary = summarize(machine, outcome, records, assessed_at, settings.compliance_classifications)
    inventory = UpdateInventory(table_service(settings))
    inventory.ensure()
    closed = [
        record_from_entity(entity, assessed_at)
        for entity in inventory.record_assessment(machine, records, summary, run_id, outcome_error(outcome))
    ]
    outbox = log_outbox(settings)
    outbox.put(UPDATE, update_rows(machine, [*records, *closed], run_id), assessed_at)
    outbox.put(UPDATE_SUMMARY, [summary_row(machine, summary, run_id, outcome_error(outcome))], assessed_at)
    return summary


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
    summaries, rows = [], []
    for machine, failure in failures:
        inventory.record_failure(machine, failure, at, run_id)
        summary = failure_summary(machine, failure, at)
        summaries.append(summary)
        rows.append(summary_row(machine, summary, run_id, f"{failure.code}: {failure.message}"))
    log_outbox(settings).put(UPDATE_SUMMARY, rows, at)
    return summaries
