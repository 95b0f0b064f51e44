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

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from shared.assessment.arc_patches import ListWanted, with_patch_lists
from shared.assessment.journal import InventoryJournal, JournalEntry, entry_for
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
from shared.assessment.updates_table import NewVersion, UpdateInventory, failure_state
from shared.azure.credentials import credential_for
from shared.azure.log_outbox import log_outbox
from shared.azure.tables import table_service
from shared.log_tables import UPDATE, UPDATE_SUMMARY
from shared.model.assessment_outcome import AssessmentFailure, AssessmentOutcome
from shared.model.machines import Machine, machine_from_json, machine_to_json
from shared.settings import Settings

# Told, with the settings and the application's time, of the update versions an applied journal brought
# that the catalogue did not hold. The governed patch inventory listens (registered in function_app.py):
# the assessment may not import governance, which reads the assessment's tables (tests/unit/test_layering).
NewVersionsListener = Callable[[Settings, list[NewVersion], datetime], object]
_new_version_listeners: list[NewVersionsListener] = []


def listen_for_new_versions(listener: NewVersionsListener) -> None:
    """Tell ``listener`` of every new update version from now on (once, however often registered)."""
    if listener not in _new_version_listeners:
        _new_version_listeners.append(listener)


def _tell_new_versions(settings: Settings, at: datetime) -> Callable[[list[NewVersion]], None] | None:
    if not _new_version_listeners:
        return None
    listeners = tuple(_new_version_listeners)

    def tell(versions: list[NewVersion]) -> None:
        for listener in listeners:
            listener(settings, versions, at)

    return tell


# -- entry points ----------------------------------------------------------------------------


def record_assessment(
    settings: Settings,
    machine: Machine,
    outcome: AssessmentOutcome,
    assessed_at: datetime,
    run_id: str,
    journal: str,
    *,
    list_awaited: bool = False,
) -> MachineAssessmentSummary:
    """Write the machine's partition, then its entry in the batch's ``journal``. Compliance follows the
    ``COMPLIANCE_CLASSIFICATIONS`` setting. A retry rewrites the same entities and the same entry.

    ``list_awaited``: an Arc server's counts-only outcome whose list Resource Graph gives when the journal
    is applied (shared.assessment.arc_patches). Only the entry is written now, flagged; the partition is
    written then (:func:`recorded_with_lists`), once, with the list or from these counts."""
    if list_awaited:
        summary = summarize(machine, outcome, [], assessed_at, settings.compliance_classifications)
        wanted = ListWanted(machine_to_json(machine), run_id, outcome).to_json()
        entry = JournalEntry(machine.key, machine.os_type.value, assessed_at, {}, awaiting_list=wanted)
    else:
        summary, entry = record_scan(settings, machine, outcome, assessed_at, run_id)
    InventoryJournal(table_service(settings), log_outbox(settings)).put(journal, entry)
    return summary


def record_scan(
    settings: Settings, machine: Machine, outcome: AssessmentOutcome, assessed_at: datetime, run_id: str
) -> tuple[MachineAssessmentSummary, JournalEntry]:
    """:func:`record_assessment` without the journal's write: the machine's partition written, the entry
    answered for the caller to keep (in the journal, or carried in a row it writes anyway: a deployment's
    steps). A retry rewrites the same entities and answers the same entry."""
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
    return summary, entry


def apply_journal(
    settings: Settings, journals: Sequence[str], at: datetime, carried: Sequence[JournalEntry] = (),
    carried_rows: Mapping[str, Sequence[dict[str, Any]]] | None = None,
) -> dict[str, int]:
    """Apply finished batches' journals together (each once; again is a no-op), with the entries and
    rows kept elsewhere for them (InventoryJournal.apply)."""
    journal = InventoryJournal(table_service(settings), log_outbox(settings))
    return journal.apply(journals, at, carried, carried_rows,
                         complete=lambda waiting: recorded_with_lists(settings, waiting),
                         on_new_versions=_tell_new_versions(settings, at))


def recorded_with_lists(settings: Settings, waiting: Sequence[JournalEntry]) -> list[JournalEntry]:
    """The Arc servers whose entries await a list (``awaiting_list``) recorded, each with the list one
    Resource Graph read found for all of them, or from its counts when Resource Graph has none for it
    yet or cannot be read (the next assessment brings it): their recorded entries, in order. Recording
    again (a retried application) rewrites the same entities and answers the same entries."""
    wanted = [ListWanted.from_json(entry.awaiting_list or {}) for entry in waiting]
    machines = [machine_from_json(w.machine) for w in wanted]
    outcomes = with_patch_lists(settings, credential_for(settings),
                                [(m.resource_id, w.outcome) for m, w in zip(machines, wanted, strict=True)])
    return [
        record_scan(settings, machine, outcome, entry.at, w.run_id)[1]
        for entry, machine, w, outcome in zip(waiting, machines, wanted, outcomes, strict=True)
    ]


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
