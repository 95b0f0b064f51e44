"""One step of one machine of a deployment run (pre-scan, install, restart, post-scan): start it, check it.

Idempotent, because Durable delivers an activity at least once: :func:`start_step` keeps an install's
or a restart's continuation token in the machine's row before it returns, and hands back a kept token
instead of sending the POST again, so a retried or replayed install never installs twice;
:func:`check_step` writes the same blob, the same ``RecordId``s and the same row columns again.

A scan keeps no token: a second assessPatches after a lost answer changes nothing on the machine (a
409 while the first still runs is retried), and not keeping one saves a read and a write per scan.
Each activity writes the machine's row at most once per purpose (the intent before an install's POST,
the token after it, a finished step's figures with its output's name) and reads it only for what its
input does not carry: an install's start reads it for a kept token or intent, a second install call for
the first's counts; the machine and its batch come in the input (StepInput.machine, .batch).

What the batch applies at its end (:func:`apply_batch_journal`) rides in the row writes the steps make
anyway: the pre-scan's journal entry (shared.assessment.journal) and each install's
``UpdateRunProgress_CL`` rows, instead of a journal write and an outbox transaction per machine; the
batch's end queues its machines' ``UpdateRunMachine_CL`` rows with them (shared.deployments.finish). A
batch that never reaches its end (its orchestration terminated) leaves them unapplied, as its journal.

An Arc-enabled server's install result has counts only; its per-update results are in Resource Graph
(shared.deployments.arc_results). The install step keeps the counts and notes the install's id on the
row (:data:`GRAPH_PENDING_COLUMN`); the batch's end reads every noted install of its machines with one
Resource Graph query per 100 machines and queues their ``UpdateRunProgress_CL`` rows with the others. An
Arc server's post-scan leaves a flagged journal entry whose list the same batch's end reads (one query per
100 machines, shared.assessment.arc_patches), as an assessment run does. Only the pre-scan reads Resource
Graph per machine: its list decides what the install names (Resource Graph allows 15 queries per 5 s).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from azure.core.credentials import TokenCredential

from shared.assessment.arc_patches import awaits_list, with_patch_list
from shared.assessment.journal import (
    InventoryJournal,
    JournalEntry,
    carried_columns,
    carried_text,
    journal_key,
)
from shared.assessment.recording import apply_journal, record_assessment, record_scan
from shared.azure.credentials import credential_for
from shared.azure.log_ingestion import wire_row
from shared.azure.log_outbox import log_outbox
from shared.azure.patch_operations import PatchOperations, PermanentArmError, failure_for
from shared.azure.tables import table_service
from shared.deployments.arc_results import needs_patch_results, patch_results_of_runs
from shared.deployments.finish import finished_machine_rows
from shared.deployments.governed import governed_install, record_batch, stored_lists
from shared.deployments.install import install_request
from shared.deployments.messages import (
    POSTSCAN,
    PRESCAN,
    RESTART,
    StepAnswer,
    StepFailure,
    StepInput,
    StepOutcome,
)
from shared.deployments.outputs import run_log_store
from shared.deployments.results import (
    MachineResultStatus,
    machine_result_status,
    patch_progress_rows,
    run_progress_rows,
)
from shared.deployments.runs_table import RunStore, run_store
from shared.deployments.selection import (
    lacks_classification_data,
    optional_kbs,
    pending_estimate,
    with_install_lists,
)
from shared.governance.releases import InstallLists
from shared.governance.releases_table import ReleaseNotFound
from shared.log_tables import UPDATE_RUN_MACHINE, UPDATE_RUN_PROGRESS
from shared.model.assessment_outcome import Readiness
from shared.model.install_outcome import InstallOutcome
from shared.model.machines import Machine, machine_from_json, machine_key, parse_resource_id
from shared.settings import Settings

# An install followed through the VM's instance view after its continuation token was lost.
FOLLOWED_TOKEN_PREFIX = "instanceview:"
# ARM's clock and the orchestration's may differ a little; an installation that started this much
# before the intent was kept is still taken as the one the lost attempt started.
INTENT_CLOCK_SKEW = timedelta(minutes=2)
# Errors that mean the machine's agent could not be reached, as opposed to an update or a request failing.
# A machine that is not running is told by its readiness (PatchOperations reads the power state on a 409),
# never by a code: OperationNotAllowed also comes from running machines.
UNREACHABLE_CODES = frozenset({"VMAgentStatusCommunicationError", "HybridAgentNotResponding"})
# A machine's Arc installs whose per-update results are still to be read from Resource Graph (JSON: step ->
# installation id, start, end): noted by the install step, read and taken off by the batch's end
# (apply_batch_journal); what stays after it is what Resource Graph did not have yet (counts only).
GRAPH_PENDING_COLUMN = "ProgressFromGraph"
# Where a machine's row carries what the batch's end applies: the pre-scan's journal entry, and each
# install call's UpdateRunProgress_CL rows (JSON over {prefix}0, {prefix}1, ..., {prefix}Parts).
PRESCAN_ENTRY_PREFIX = "Journal_prescan_"


def progress_prefix(step: str) -> str:
    return f"Progress_{step}_"


# The outputs a machine's row lists before a step's check adds its own, for the steps whose check reads
# no row: the child runs them in this order (functions/deployments.py deploy_machine), and each step's
# check lists its output in the write that stores its figures.
_LISTED_BEFORE: dict[str, tuple[str, ...]] = {PRESCAN: (), "install1": (PRESCAN,), RESTART: ()}
# What an administrator can do when an install (not an assessment) is refused.
_INSTALL_HINTS = {
    "AuthorizationFailed": (
        "Grant the app's managed identity the installPatches action on this machine "
        "(Microsoft.Compute/virtualMachines/installPatches/action or the HybridCompute equivalent)."
    ),
}


def step_column(step: str) -> str:
    return f"Token_{step}"


# --- steps ----------------------------------------------------------------------------------------


def _operations(settings: Settings, credential: TokenCredential, resource_id: str) -> PatchOperations:
    subscription = parse_resource_id(resource_id).subscription_id
    return PatchOperations(credential, settings.arm_endpoint, subscription)


def _failure(error: PermanentArmError, step: str) -> StepFailure:
    failure = error.failure
    unreachable = failure.code in UNREACHABLE_CODES or failure.readiness is Readiness.NOT_ASSESSABLE
    hint = _INSTALL_HINTS.get(failure.code, failure.hint) if step.startswith("install") else failure.hint
    return StepFailure(code=failure.code, message=failure.message, hint=hint, unreachable=unreachable)


def start_step(settings: Settings, request: StepInput) -> StepAnswer:
    """Send the step's POST (assessPatches or installPatches), or return the token kept from before."""
    assert request.at is not None, "a step starts at a time"
    credential = credential_for(settings)
    if request.step in (PRESCAN, POSTSCAN):
        try:
            return StepAnswer(token=_operations(settings, credential, request.resource_id)
                              .start_assessment(request.resource_id))
        except PermanentArmError as error:
            return StepAnswer(failure=_failure(error, request.step))
    store = run_store(settings, credential)
    key = machine_key(request.resource_id)
    if _intent_kept_unread(store, request):
        assert request.machine is not None
        operations = _operations(settings, credential, request.resource_id)
        return _post_install(operations, store, request, request.machine)
    row = store.machine(request.run_id, key)
    kept = row.get(step_column(request.step))
    if kept:
        return StepAnswer(token=str(kept))
    try:
        operations = _operations(settings, credential, request.resource_id)
        if request.step == RESTART:
            token = operations.start_restart(request.resource_id)
        else:
            followed = _install_started_before(store, operations, request, row)
            if followed is not None:  # kept with the install's result, as a posted install's token
                return StepAnswer(token=followed)
            return _post_install(operations, store, request, str(row["Machine"]),
                                 exclude_kbs=json.loads(row.get("OptionalKbs") or "[]"),
                                 governed=stored_lists(row))
    except PermanentArmError as error:
        return StepAnswer(failure=_failure(error, request.step))
    store.update_machine(request.run_id, key, {step_column(request.step): token})
    return StepAnswer(token=token)


def _intent_kept_unread(store: RunStore, request: StepInput) -> bool:
    """The first install call's intent, written without reading the machine's row: the pre-scan answered
    the row's ETag because the install needs nothing from it but the machine, which the input carries.
    The intent is written under that ETag: True if the row is unchanged since the pre-scan (the first
    delivery: no intent, no token); False if it changed (an earlier delivery's intent, a safety check's
    columns) or there is no ETag, and the row is read as for any other start."""
    if not (request.row_etag and request.step == "install1" and request.machine is not None):
        return False
    return store.update_machine_if(request.run_id, machine_key(request.resource_id),
                                   {intent_column(request.step): request.at}, request.row_etag)


def _post_install(operations: PatchOperations, store: RunStore, request: StepInput, machine_json: str,
                  exclude_kbs: Sequence[str] = (), governed: InstallLists | None = None) -> StepAnswer:
    """Send the installPatches POST for what is left of the window; its token is kept with the install's
    result (_installed), one row write fewer per machine: once this activity answers, the token is in
    the child's history. A delivery again after a host died before the answer finds the intent and
    follows the install (or, on an Arc server, posts again and waits out the 409 while the first runs)."""
    assert request.at is not None
    run = store.terms(request.run_id)
    install = install_request(run.definition, machine_from_json(machine_json).os_type,
                              run.window.install_duration(request.at), exclude_kbs=exclude_kbs,
                              governed=governed)
    try:
        return StepAnswer(token=operations.start_install(request.resource_id, install))
    except PermanentArmError as error:
        return StepAnswer(failure=_failure(error, request.step))


def intent_column(step: str) -> str:
    return f"Intent_{step}"


def _install_started_before(store: RunStore, operations: PatchOperations, request: StepInput,
                            row: Mapping[str, Any]) -> str | None:
    """Guard against a second install after a lost token.

    Before the install POST, the time is kept in the machine's row (the intent). An activity that
    finds an intent but no token is a delivery after a host died between the POST and keeping
    the token. If the VM reports an installation started since the intent, that one is followed
    through the instance view (its token is ``instanceview:<activity id>``) instead of posting
    again. Otherwise, or for an Arc server (no patch status on its resource), the POST is sent:
    an install still running answers 409 on a running machine, which is retried later.
    """
    assert request.at is not None
    intent = row.get(intent_column(request.step))
    if not isinstance(intent, datetime):
        store.update_machine(request.run_id, machine_key(request.resource_id),
                             {intent_column(request.step): request.at})
        return None
    seen = operations.last_installation(request.resource_id)
    if seen is None or seen.started_at is None or seen.started_at < intent - INTENT_CLOCK_SKEW:
        return None
    return FOLLOWED_TOKEN_PREFIX + seen.activity_id


def _followed_install(operations: PatchOperations, request: StepInput) -> InstallOutcome | None:
    """An install followed through the VM's instance view: None while it runs; counts once done."""
    assert request.token is not None
    activity = request.token.removeprefix(FOLLOWED_TOKEN_PREFIX)
    seen = operations.last_installation(request.resource_id)
    if seen is None or seen.activity_id != activity:
        raise PermanentArmError(failure_for(
            "InstallNotFollowed", f"the VM no longer reports installation {activity} as its last one",
        ))  # fmt: skip
    return seen.outcome if seen.finished else None


def check_step(settings: Settings, request: StepInput) -> StepAnswer:
    """One status check; once done, store what the step found and answer the figures the child needs."""
    assert request.at is not None and request.token, "a check needs the time and the token"
    credential = credential_for(settings)
    try:
        operations = _operations(settings, credential, request.resource_id)
        if request.step in (PRESCAN, POSTSCAN):
            scan = operations.check_assessment(request.resource_id, request.token)
            if scan is None:
                return StepAnswer(in_progress=True)
            return StepAnswer(outcome=_scanned(settings, credential, request, scan))
        if request.step == RESTART:
            if not operations.check_restart(request.resource_id, request.token):
                return StepAnswer(in_progress=True)
            return StepAnswer(outcome=_restarted(settings, credential, request))
        if request.token.startswith(FOLLOWED_TOKEN_PREFIX):
            install = _followed_install(operations, request)
        else:
            install = operations.check_install(request.resource_id, request.token)
        if install is None:
            return StepAnswer(in_progress=True)
        return StepAnswer(outcome=_installed(settings, credential, request, install))
    except PermanentArmError as error:
        return StepAnswer(failure=_failure(error, request.step))


def _machine_row(settings: Settings, credential: TokenCredential, request: StepInput,
                 needed: bool = False) -> tuple[RunStore, str, dict[str, Any] | None]:
    """The run store, the machine's key and its row in the run: read when ``needed`` or when the input
    does not carry the machine and its batch (an input from before they were carried), else None."""
    store = run_store(settings, credential)
    key = machine_key(request.resource_id)
    if not needed and request.machine is not None and request.batch is not None:
        return store, key, None
    return store, key, store.machine(request.run_id, key)


def _machine(request: StepInput, row: Mapping[str, Any] | None) -> Machine:
    return machine_from_json(request.machine if request.machine is not None else str((row or {})["Machine"]))


def _journal(request: StepInput, row: Mapping[str, Any] | None) -> str:
    batch = request.batch if request.batch is not None else int((row or {}).get("Batch") or 0)
    return journal_key(request.run_id, batch)


def _scanned(settings: Settings, credential: TokenCredential, request: StepInput,
             outcome: Any) -> StepOutcome:
    assert request.at is not None
    # An input's results_pending (set by installs before the batch's end read Arc results) needs no row now.
    store, key, row = _machine_row(settings, credential, request)
    machine = _machine(request, row)
    if request.step == POSTSCAN:
        # An Arc server's list is read with its batch's, when the batch's end applies the journal (one
        # Resource Graph query per 100 machines: shared.assessment.arc_patches), as an assessment run's.
        awaited = awaits_list(request.resource_id, outcome)
        record_assessment(settings, machine, outcome, request.at, request.run_id, _journal(request, row),
                          list_awaited=awaited)
        _keep_output(settings, credential, request, row, asdict(outcome))
        # The post-scan's name joins the row's outputs with the machine's result (RunStore.claim).
        return StepOutcome()
    # The pre-scan's list decides what the install names: read now, for this machine.
    outcome = with_patch_list(settings, credential, request.resource_id, outcome)
    # The pre-scan writes its row anyway: its journal entry rides there (or, too long, in the journal).
    _, entry = record_scan(settings, machine, outcome, request.at, request.run_id)
    journal = InventoryJournal(table_service(settings, credential), log_outbox(settings, credential))
    carried = journal.put_or_carry(_journal(request, row), entry, PRESCAN_ENTRY_PREFIX)
    columns = _keep_output(settings, credential, request, row, asdict(outcome))
    definition = store.terms(request.run_id).definition
    try:
        governed = governed_install(settings, definition, machine, outcome)
    except ReleaseNotFound as error:
        raise PermanentArmError(failure_for("ReleaseNotFound", str(error))) from None
    # A release or approvedOnly names what to install: the estimate is of exactly those updates.
    selecting = with_install_lists(definition, governed.lists) if governed else definition
    estimate = pending_estimate(selecting, outcome)
    to_install = estimate.updates
    if governed is not None and outcome.patches is None:
        to_install = governed.items  # counts only (Arc): named updates cannot be counted; at most all of them
    optional = optional_kbs(outcome.patches or ())
    etag = store.update_machine(request.run_id, key, {
        "PrescanPending": to_install, "OptionalKbs": json.dumps(optional),
        **columns, **carried, **(governed.columns() if governed else {}),
    })  # fmt: skip
    unclassified = (to_install == 0 and governed is None
                    and lacks_classification_data(definition, machine, outcome))
    return StepOutcome(pending=to_install, has_service_pack=estimate.has_service_pack,
                       unclassified=unclassified, held=len(governed.held) if governed else 0,
                       row_etag=etag if not optional and governed is None else None)


def _installed(settings: Settings, credential: TokenCredential, request: StepInput,
               outcome: Any) -> StepOutcome:
    assert request.at is not None
    # A second call adds to the first's count and keeps the first's pending Arc results: it reads the row.
    store, key, row = _machine_row(settings, credential, request, needed=request.step != "install1")
    machine = _machine(request, row)
    run = store.terms(request.run_id)
    # An Arc server's counts-only result: its per-update rows come at the batch's end (_graph_pending).
    rows = run_progress_rows(machine, outcome, run.deployment_name, request.run_id, request.at,
                             release=run.definition.release)
    # Carried in the row this step writes anyway, queued by the batch's end (apply_batch_journal).
    progress = carried_columns(progress_prefix(request.step), json.dumps([wire_row(r) for r in rows]))
    if progress is None:
        log_outbox(settings, credential).put(UPDATE_RUN_PROGRESS, rows, request.at)
    # Where the result came from: the install operation, or (token lost) the VM's patch status.
    followed = bool(request.token and request.token.startswith(FOLLOWED_TOKEN_PREFIX))
    source = {"source": "instanceView" if followed else "installPatches"}
    columns = _keep_output(settings, credential, request, row, asdict(outcome) | source)
    installed_before = int(row.get("Installed", 0)) if row is not None and request.step != "install1" else 0
    status = machine_result_status(outcome, installed_before)
    store.update_machine(request.run_id, key, {
        "Installed": installed_before + outcome.installed, "FailedUpdates": outcome.failed,
        "Pending": outcome.pending, "Excluded": outcome.excluded, "NotSelected": outcome.not_selected,
        "RebootStatus": outcome.reboot_status, "InstallStatus": status.value,
        "ErrorCode": outcome.error_code or "", "ErrorMessage": (outcome.error_message or "")[:4000],
        step_column(request.step): request.token,  # the install's token (start_step keeps none)
        **_graph_pending(row, request, outcome), **columns, **(progress or {}),
    })  # fmt: skip
    return StepOutcome(
        pending=outcome.pending, status=status.value, installed=outcome.installed, failed=outcome.failed,
        window_exceeded=outcome.maintenance_window_exceeded,
    )  # fmt: skip


def _graph_pending(row: Mapping[str, Any] | None, request: StepInput,
                   outcome: InstallOutcome) -> dict[str, str]:
    """The machine's GRAPH_PENDING_COLUMN with this install step noted (an Arc server's counts-only result,
    whose per-update results the batch's end reads) or taken off (a result with its list); nothing to write
    when neither applies. Without the row (the first install call, which nothing was noted before), the
    column is written either way."""
    assert request.at is not None
    pending = json.loads((row or {}).get(GRAPH_PENDING_COLUMN) or "{}")
    if needs_patch_results(request.resource_id, outcome):
        started = outcome.started_at.isoformat() if outcome.started_at else None
        pending[request.step] = {"installation": outcome.activity_id, "startedAt": started,
                                 "at": request.at.isoformat()}
    elif pending.pop(request.step, None) is None and row is not None:
        return {}
    return {GRAPH_PENDING_COLUMN: json.dumps(pending)}


def _restarted(settings: Settings, credential: TokenCredential, request: StepInput) -> StepOutcome:
    assert request.at is not None
    store, key, row = _machine_row(settings, credential, request)
    # The check's token is the one start_step kept in the row (or handed back from it).
    document = {"operation": "restart", "token": request.token, "finishedBy": request.at}
    columns = _keep_output(settings, credential, request, row, document)
    store.update_machine(request.run_id, key, {"RebootStatus": "Completed", **columns})
    return StepOutcome(status=MachineResultStatus.SUCCEEDED.value)


def _keep_output(settings: Settings, credential: TokenCredential, request: StepInput,
                 row: Mapping[str, Any] | None, document: Mapping[str, Any]) -> dict[str, str]:
    """The step's whole result in Blob Storage; answers the row's list of outputs with the step's name
    added, for the caller to write with the step's figures in one merge (nothing when it is there).
    Without the row, the list is the steps that ran before (_LISTED_BEFORE) and this one."""
    key = machine_key(request.resource_id)
    logs = run_log_store(settings, credential)
    logs.ensure()
    logs.put(request.run_id, key, request.step, json.loads(json.dumps(document, default=str)))
    if row is None:
        return {"Outputs": json.dumps([*_LISTED_BEFORE.get(request.step, ()), request.step])}
    outputs = json.loads(row.get("Outputs") or "[]")
    return {} if request.step in outputs else {"Outputs": json.dumps([*outputs, request.step])}


# --- the batch's end --------------------------------------------------------------------------------


def apply_batch_journal(settings: Settings, run_id: str, batch: int, at: datetime,
                        rows: Sequence[Mapping[str, Any]] | None = None,
                        key_range: tuple[str, str] | None = None) -> dict[str, int]:
    """Apply the batch's inventory journal (shared.assessment.journal) with what its machines' rows carry:
    the pre-scans' entries, the installs' UpdateRunProgress_CL rows (an Arc server's read here from Resource
    Graph, all of the batch's at once: :func:`_arc_progress_rows`), and the UpdateRunMachine_CL rows of the
    machines its claims recorded. Once; again is a no-op. ``rows``: the batch's machine rows when the
    caller has read them (else read here, within the batch's ``key_range`` when the caller has it)."""
    store = run_store(settings)
    rows = rows if rows is not None else store.batch_rows(run_id, batch, key_range)
    terms = store.terms(run_id)
    journal = journal_key(run_id, batch)
    entries: list[JournalEntry] = []
    progress: list[dict[str, Any]] = []
    for row in rows:
        text = carried_text(row, PRESCAN_ENTRY_PREFIX)
        if text is not None:
            entries.append(JournalEntry.from_json(text))
        for step in ("install1", "install2"):
            text = carried_text(row, progress_prefix(step))
            if text is not None:
                progress += json.loads(text)
    arc_progress, notes = _arc_progress_rows(settings, terms.deployment_name, run_id, journal, rows,
                                             release=terms.definition.release)
    progress += arc_progress
    # Authorization columns on the progress rows, MachineChanges, test evidence (shared.deployments.governed).
    record_batch(settings, progress, rows, at)
    machines = finished_machine_rows(terms, rows, at)
    queued = {UPDATE_RUN_PROGRESS.name: progress, UPDATE_RUN_MACHINE.name: machines}
    applied = apply_journal(settings, [journal], at, entries,
                            {table: table_rows for table, table_rows in queued.items() if table_rows})
    if notes:  # after the rows are queued: a note taken off is never a row lost
        store.update_machines(run_id, notes)
    return applied


def _arc_progress_rows(
    settings: Settings, deployment: str, run_id: str, journal: str, rows: Sequence[Mapping[str, Any]],
    *, release: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    """The UpdateRunProgress_CL rows (wire form, as the carried ones) of the Arc installs noted on the
    batch's rows (:data:`GRAPH_PENDING_COLUMN`), from one Resource Graph query per 100 machines for all of
    them, each as the install step would have built it (its start, the time its result was seen); and, by
    machine key, the notes to write back with the installs found taken off. An install Resource Graph does
    not have yet (or cannot give) stays noted and counts-only: the machine's result and counts are right,
    its per-update rows are missing. Nothing is read when nothing is noted or when the journal is applied
    already (its rows were queued by that application: a second one would queue nothing)."""
    noted = [(row, step, note) for row in rows
             for step, note in json.loads(row.get(GRAPH_PENDING_COLUMN) or "{}").items()]
    if not noted:
        return [], {}
    credential = credential_for(settings)
    tables, outbox = table_service(settings, credential), log_outbox(settings, credential)
    if InventoryJournal(tables, outbox).applied(journal):
        return [], {}
    found = patch_results_of_runs(settings, credential, [
        (str(row["ResourceId"]), str(note["installation"])) for row, _, note in noted
    ])  # fmt: skip
    progress: list[dict[str, Any]] = []
    left: dict[str, dict[str, Any]] = {}  # by machine key, of the machines with an install found
    for row, step, note in noted:
        resource_id = str(row["ResourceId"])
        listed = found.get((resource_id.lower(), str(note["installation"]).lower()))
        if listed is None:
            continue
        machine = machine_from_json(str(row["Machine"]))
        started = datetime.fromisoformat(note["startedAt"]) if note.get("startedAt") else None
        seen = datetime.fromisoformat(note["at"])
        rows_of_run = patch_progress_rows(machine, listed, started, deployment, run_id, seen, release=release)
        progress += [wire_row(r) for r in rows_of_run]
        pending = left.setdefault(machine.key, json.loads(row.get(GRAPH_PENDING_COLUMN) or "{}"))
        del pending[step]
    return progress, {key: {GRAPH_PENDING_COLUMN: json.dumps(pending)} for key, pending in left.items()}
