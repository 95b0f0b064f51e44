"""The work behind the update-deployment activities: resolve a run's machines, run one step, finish.

Every function here is idempotent, because Durable delivers an activity at least once:

- :func:`resolve` writes the same rows again and leaves a resolved run alone.
- :func:`start_step` keeps the operation's continuation token in the machine's row before it
  returns, and hands back a kept token instead of sending the POST again, so a retried or
  replayed install never installs twice.
- :func:`check_step` writes the same blob, the same ``RecordId``s and the same row columns again.
- :func:`finish` records a machine once (:meth:`RunStore.finish_machine`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from azure.core.credentials import TokenCredential
from azure.monitor.query import LogsQueryClient

from shared.assessment.recording import record_assessment
from shared.assessment.run import machine_from_json, machine_to_json
from shared.azure.arm import list_fleet
from shared.azure.credentials import credential_for
from shared.azure.log_ingestion import LogSink
from shared.azure.patch_operations import PatchOperations, PermanentArmError, failure_for
from shared.azure.tables import table_service
from shared.deployments.definition import DeploymentDefinition
from shared.deployments.definitions_table import (
    DeploymentStore,
    GroupEvaluationError,
    evaluate_groups,
    saved_search_runner,
)
from shared.deployments.install import install_request
from shared.deployments.messages import (
    POSTSCAN,
    PRESCAN,
    RESTART,
    RunPlan,
    StepAnswer,
    StepFailure,
    StepInput,
    StepOutcome,
)
from shared.deployments.outputs import run_log_store
from shared.deployments.results import (
    MachineResultStatus,
    machine_result_status,
    run_machine_row,
    run_progress_rows,
)
from shared.deployments.rollout import may_reboot
from shared.deployments.runs_table import (
    FINAL_STATES,
    MachineOutcomeRecord,
    MachineTarget,
    RunRecord,
    RunState,
    RunStore,
)
from shared.deployments.selection import optional_kbs, pending_estimate
from shared.log_tables import UPDATE_RUN_MACHINE, UPDATE_RUN_PROGRESS
from shared.model.assessment_outcome import Readiness
from shared.model.install_outcome import InstallOutcome
from shared.model.machines import Machine, MachineKind, PowerState, Support, machine_key, parse_resource_id
from shared.settings import Settings

# An install followed through the VM's instance view after its continuation token was lost.
FOLLOWED_TOKEN_PREFIX = "instanceview:"
# ARM's clock and the orchestration's may differ a little; an installation that started this much
# before the intent was kept is still taken as the one the lost attempt started.
INTENT_CLOCK_SKEW = timedelta(minutes=2)
# The reboot setting that restarts machines without installing (legacy "Reboot only").
RESTART_ONLY = "RebootOnly"
# Errors that mean the machine could not be reached, as opposed to an update or a request failing.
UNREACHABLE_CODES = frozenset({"VMAgentStatusCommunicationError", "HybridAgentNotResponding",
                               "OperationNotAllowed"})
# What an administrator can do when an install (not an assessment) is refused.
_INSTALL_HINTS = {
    "AuthorizationFailed": (
        "Grant the app's managed identity the installPatches action on this machine "
        "(Microsoft.Compute/virtualMachines/installPatches/action or the HybridCompute equivalent)."
    ),
}


# Run-log containers this process has created or found, so each step does not ask again.
_CONTAINERS_ENSURED: set[str] = set()


def run_store(settings: Settings, credential: TokenCredential | None = None) -> RunStore:
    store = RunStore(table_service(settings, credential or credential_for(settings)))
    store.ensure()
    return store


def step_column(step: str) -> str:
    return f"Token_{step}"


# --- resolving the run's machines -----------------------------------------------------------------


def resolve(settings: Settings, run_id: str, at: datetime, batch_size: int) -> RunPlan:
    """List the targets, settle the ones that cannot run, queue the rest in batches."""
    credential = credential_for(settings)
    store = run_store(settings, credential)
    run = store.get_run(run_id)
    if run.state is not RunState.QUEUED:
        return _plan(run, batch_size)  # resolved before: a retried activity
    definition = run.definition
    machines, failed = list_fleet(credential, settings.arm_endpoint, settings.target_subscription_ids)
    by_id = {m.resource_id.lower(): m for m in machines}
    try:
        wanted = _target_ids(settings, credential, store, run, machines, failed)
    except GroupEvaluationError as error:
        store.fail(run_id, str(error), at)
        return RunPlan(error=str(error))
    queued: list[Machine] = []
    settled: list[tuple[MachineTarget, MachineOutcomeRecord]] = []
    settled_rows: list[dict[str, Any]] = []
    for resource_id in wanted:
        machine = by_id.get(resource_id.lower())
        verdict = _cannot_run(definition, machine, resource_id, failed)
        if verdict is None and machine is not None:
            queued.append(machine)
        else:
            assert verdict is not None
            name = machine.computer_name if machine else parse_resource_id(resource_id).name
            settled.append((MachineTarget(machine_key(resource_id), resource_id, name, -1), verdict))
            settled_rows.append(run_machine_row(run_id, run.deployment_name, resource_id, name,
                                                machine.os_type if machine else None, verdict, None, at))
    queued.sort(key=lambda m: m.resource_id.lower())
    targets = [
        MachineTarget(m.key, m.resource_id, m.computer_name, index // batch_size, machine_to_json(m))
        for index, m in enumerate(queued)
    ]
    # Sent before the run leaves "queued": a retry after a failed upload comes back here and sends
    # the same rows (same RecordIds) again, where after it the retry would return above.
    _send_machine_rows(settings, credential, settled_rows)
    resolved = store.resolve(run_id, at, targets, settled)
    return _plan(resolved, batch_size)


def _plan(run: RunRecord, batch_size: int) -> RunPlan:
    return RunPlan(
        targets=run.targets, to_run=run.to_run, batches=-(-run.to_run // batch_size),
        settled=run.targets - run.to_run, window_start=run.window_start, window_minutes=run.window_minutes,
        reboot=may_reboot(run.definition.reboot_setting),
        restart_only=run.definition.reboot_setting == RESTART_ONLY,
    )  # fmt: skip


def _target_ids(settings: Settings, credential: TokenCredential, store: RunStore, run: RunRecord,
                machines: Sequence[Machine], failed: Sequence[str]) -> list[str]:
    """Explicit machines first, then the group members: frozen with the run, or evaluated now."""
    definition = run.definition
    members = store.frozen_members(run.run_id)
    if members is None and definition.targets.groups:
        if failed:
            raise GroupEvaluationError(f"could not list the machines of subscriptions {', '.join(failed)}")

        def query(text: str) -> list[str]:
            with LogsQueryClient(credential, endpoint=settings.logs_query_endpoint) as client:
                return saved_search_runner(client, settings.log_analytics_workspace_id)(text)

        members = evaluate_groups(definition, lambda: machines, query)
    seen: dict[str, str] = {}
    for resource_id in [*definition.targets.machines, *(members or ())]:
        seen.setdefault(resource_id.lower(), resource_id)
    return list(seen.values())


def _cannot_run(definition: DeploymentDefinition, machine: Machine | None, resource_id: str,
                failed_subscriptions: Sequence[str]) -> MachineOutcomeRecord | None:
    """Why a target is settled without running, or None when it may run."""
    skipped, unreachable = MachineResultStatus.SKIPPED, MachineResultStatus.NOT_REACHABLE
    if machine is None:
        subscription = parse_resource_id(resource_id).subscription_id
        if subscription in failed_subscriptions:
            return MachineOutcomeRecord(unreachable, f"subscription {subscription} could not be listed")
        return MachineOutcomeRecord(skipped, "machine not found in the target subscriptions")
    if machine.os_type is not definition.operating_system:
        return MachineOutcomeRecord(
            skipped, f"machine runs {machine.os_type.value}; the deployment is for "
            f"{definition.operating_system.value}",
        )  # fmt: skip
    if definition.reboot_setting == RESTART_ONLY and machine.kind is MachineKind.ARC_SERVER:
        return MachineOutcomeRecord(skipped, "Arc-enabled servers have no restart API; use rebootSetting "
                                    "Always with an install to restart them")
    verdict = machine.support
    if verdict.support is not Support.FULL:
        return MachineOutcomeRecord(skipped, f"{verdict.support.value}: {verdict.reason}")
    if machine.power_state in (PowerState.DEALLOCATED, PowerState.STOPPED):
        return MachineOutcomeRecord(unreachable, f"machine is {machine.power_state.value}")
    if machine.reachable_reason:
        return MachineOutcomeRecord(unreachable, machine.reachable_reason)
    return None


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
    store = run_store(settings, credential)
    key = machine_key(request.resource_id)
    row = store.machine(request.run_id, key)
    kept = row.get(step_column(request.step))
    if kept:
        return StepAnswer(token=str(kept))
    try:
        with _operations(settings, credential, request.resource_id) as operations:
            if request.step in (PRESCAN, POSTSCAN):
                token = operations.start_assessment(request.resource_id)
            elif request.step == RESTART:
                token = operations.start_restart(request.resource_id)
            else:
                followed = _install_started_before(store, operations, request, row)
                if followed is not None:
                    store.update_machine(request.run_id, key, {step_column(request.step): followed})
                    return StepAnswer(token=followed)
                run = store.get_run(request.run_id)
                machine = machine_from_json(str(row["Machine"]))
                install = install_request(
                    run.definition, machine.os_type, run.window.install_duration(request.at),
                    exclude_kbs=json.loads(row.get("OptionalKbs") or "[]"),
                )  # fmt: skip
                token = operations.start_install(request.resource_id, install)
    except PermanentArmError as error:
        return StepAnswer(failure=_failure(error, request.step))
    store.update_machine(request.run_id, key, {step_column(request.step): token})
    return StepAnswer(token=token)


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
    an install still running answers 409 Conflict, which is retried later.
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
        with _operations(settings, credential, request.resource_id) as operations:
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


def _machine_row(settings: Settings, credential: TokenCredential,
                 request: StepInput) -> tuple[RunStore, str, dict[str, Any]]:
    """The run store, the machine's key and its row in the run."""
    store = run_store(settings, credential)
    key = machine_key(request.resource_id)
    return store, key, store.machine(request.run_id, key)


def _scanned(settings: Settings, credential: TokenCredential, request: StepInput,
             outcome: Any) -> StepOutcome:
    assert request.at is not None
    store, key, row = _machine_row(settings, credential, request)
    machine = machine_from_json(str(row["Machine"]))
    record_assessment(settings, machine, outcome, request.at, request.run_id)
    _keep_output(settings, credential, store, request, row, asdict(outcome))
    if request.step == POSTSCAN:
        return StepOutcome()
    definition = store.get_run(request.run_id).definition
    estimate = pending_estimate(definition, outcome)
    store.update_machine(request.run_id, key, {
        "PrescanPending": estimate.updates, "OptionalKbs": json.dumps(optional_kbs(outcome.patches or ())),
    })  # fmt: skip
    return StepOutcome(pending=estimate.updates, has_service_pack=estimate.has_service_pack)


def _installed(settings: Settings, credential: TokenCredential, request: StepInput,
               outcome: Any) -> StepOutcome:
    assert request.at is not None
    store, key, row = _machine_row(settings, credential, request)
    machine = machine_from_json(str(row["Machine"]))
    run = store.get_run(request.run_id)
    rows = run_progress_rows(machine, outcome, run.deployment_name, request.run_id, request.at)
    sink = LogSink(credential, settings.logs_ingestion_endpoint, settings.logs_dcr_immutable_id)
    try:
        sink.send(UPDATE_RUN_PROGRESS, rows)
    finally:
        sink.close()
    # Where the result came from: the install operation, or (token lost) the VM's patch status.
    followed = bool(request.token and request.token.startswith(FOLLOWED_TOKEN_PREFIX))
    source = {"source": "instanceView" if followed else "installPatches"}
    _keep_output(settings, credential, store, request, row, asdict(outcome) | source)
    status = machine_result_status(outcome)
    installed_before = int(row.get("Installed", 0)) if request.step != "install1" else 0
    store.update_machine(request.run_id, key, {
        "Installed": installed_before + outcome.installed, "FailedUpdates": outcome.failed,
        "Pending": outcome.pending, "Excluded": outcome.excluded, "NotSelected": outcome.not_selected,
        "RebootStatus": outcome.reboot_status, "InstallStatus": status.value,
        "ErrorCode": outcome.error_code or "", "ErrorMessage": (outcome.error_message or "")[:4000],
    })  # fmt: skip
    return StepOutcome(
        pending=outcome.pending, status=status.value, installed=outcome.installed, failed=outcome.failed,
        window_exceeded=outcome.maintenance_window_exceeded,
    )  # fmt: skip


def _restarted(settings: Settings, credential: TokenCredential, request: StepInput) -> StepOutcome:
    assert request.at is not None
    store, key, row = _machine_row(settings, credential, request)
    document = {"operation": "restart", "token": row.get(step_column(RESTART)), "finishedBy": request.at}
    _keep_output(settings, credential, store, request, row, document)
    store.update_machine(request.run_id, key, {"RebootStatus": "Completed"})
    return StepOutcome(status=MachineResultStatus.SUCCEEDED.value)


def _keep_output(settings: Settings, credential: TokenCredential, store: RunStore, request: StepInput,
                 row: Mapping[str, Any], document: Mapping[str, Any]) -> None:
    """The step's whole result in Blob Storage, and its name in the machine's list of outputs."""
    key = machine_key(request.resource_id)
    logs = run_log_store(settings, credential)
    account = settings.storage_blob_endpoint or settings.storage_connection_string
    container = f"{account}|{settings.run_logs_container}"
    if container not in _CONTAINERS_ENSURED:
        logs.ensure()
        _CONTAINERS_ENSURED.add(container)
    logs.put(request.run_id, key, request.step, json.loads(json.dumps(document, default=str)))
    outputs = json.loads(row.get("Outputs") or "[]")
    if request.step not in outputs:
        store.update_machine(request.run_id, key, {"Outputs": json.dumps([*outputs, request.step])})


# --- finishing ------------------------------------------------------------------------------------


def finish(settings: Settings, run_id: str, resource_id: str, status: MachineResultStatus, reason: str,
           at: datetime, failure: StepFailure | None) -> MachineOutcomeRecord:
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
        # Finished before: a retried call whose upload may have failed; send what the store holds
        # again (same RecordId, so a second copy is recognisable).
        stored = store.machine(run_id, key)
        log_row = _machine_log_row(run, stored, _stored_outcome(stored), stored.get("FinishedAt") or at)
    _send_machine_rows(settings, credential, [log_row])
    return outcome


def deployment_store(settings: Settings) -> DeploymentStore:
    store = DeploymentStore(table_service(settings, credential_for(settings)))
    store.ensure()
    return store


# --- the machines' results in Log Analytics -------------------------------------------------------


def record_never_started(settings: Settings, run_id: str, at: datetime) -> int:
    """At the end of a run: send the ``UpdateRunMachine_CL`` rows of every machine the gate recorded
    as not started (error budget, window closing, cancelled); :meth:`RunStore.claim` wrote them and
    has no Log Analytics access. Returns the number of rows sent.

    Done once, when the run completes, rather than by each claim: a claim retried after its upload
    failed would no longer list those machines, and their rows would be lost. Settled machines
    (batch -1) were sent when the run resolved its targets."""
    credential = credential_for(settings)
    store = run_store(settings, credential)
    never = [
        row for row in store.machines(run_id)
        if int(row.get("Batch", -1)) >= 0 and not row.get("StartedAt") and row["State"] in FINAL_STATES
    ]  # fmt: skip
    if not never:
        return 0
    run = store.get_run(run_id)
    return _send_machine_rows(settings, credential, [
        _machine_log_row(run, row, _stored_outcome(row), row.get("FinishedAt") or at) for row in never
    ])  # fmt: skip


def _send_machine_rows(settings: Settings, credential: TokenCredential,
                       rows: Sequence[dict[str, Any]]) -> int:
    sink = LogSink(credential, settings.logs_ingestion_endpoint, settings.logs_dcr_immutable_id)
    try:
        return sink.send(UPDATE_RUN_MACHINE, rows)
    finally:
        sink.close()


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
