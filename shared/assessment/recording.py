"""Recording one machine's assessment: the inventory in Table Storage, then the Log Analytics rows.

What the orchestration's activities call. Both writes are idempotent: the same input writes the
same entities, and the same rows with the same ``RecordId``.
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
from shared.azure.credentials import credential_for
from shared.azure.log_ingestion import LogSink
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
    """Write the inventory, then the Log Analytics rows. Compliance follows the
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
    sink = LogSink(credential_for(settings), settings.logs_ingestion_endpoint, settings.logs_dcr_immutable_id)
    sink.send(UPDATE, update_rows(machine, [*records, *closed], run_id))
    sink.send(UPDATE_SUMMARY, [summary_row(machine, summary, run_id, outcome_error(outcome))])
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
    sink = LogSink(credential_for(settings), settings.logs_ingestion_endpoint, settings.logs_dcr_immutable_id)
    sink.send(UPDATE_SUMMARY, rows)
    return summaries
