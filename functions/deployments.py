"""Update deployment runs: the scheduler timer, the orchestrations and their activities.

``deployment_run`` (master) resolves the run's machines through an activity that writes them to
Table Storage in batches, then runs one ``deployment_batch`` per batch at once. A batch asks the
run's rollout gate (``claim_deployment_machines``: concurrency, error budget, window cut-off,
cancel; one ETag-guarded transaction shared by all batches) which of its machines may start,
starts one ``deploy_machine`` child per granted machine, and asks again whenever one finishes or,
while other batches hold slots, after ``slot_poll_seconds`` (twice that after an ask that started
nothing). Each child pre-scans, installs, post-scans and returns its result; the batch's next claim
records it, with every other child ended by then, and frees their slots in the same transaction. Only
counts travel upwards.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from functions.durable import (
    STORAGE_RETRY,
    batch_instance_id,
    call_storage,
    machine_instance_id,
    poll_operation,
    runtime_status,
    send_log_rows,
    start_once,
)
from functions.safe_rollout import Guard, SafetyEnd, after_install, before_install
from shared.azure.tables import table_service
from shared.deployments.definition import DeploymentDefinition
from shared.deployments.definitions_table import deployment_store
from shared.deployments.finish import record_and_claim, record_never_started
from shared.deployments.messages import (
    MAX_INSTALL_CALLS,
    POSTSCAN,
    PRESCAN,
    RESTART,
    BatchJournalApply,
    BatchMachines,
    BatchMachinesRead,
    ClaimInput,
    ClaimResult,
    DeploymentBatchInput,
    DeploymentRunInput,
    DeploymentTuning,
    MachineDeploymentInput,
    MachineRunResult,
    ResolveInput,
    RunPlan,
    SafetyPolicyRead,
    StepAnswer,
    StepFailure,
    StepInput,
    StepOutcome,
    install_step,
)
from shared.deployments.reconcile import open_runs, reconcile
from shared.deployments.resolve import resolve
from shared.deployments.results import MachineResultStatus
from shared.deployments.ring_notifications import notify_run_ended, notify_run_resolved
from shared.deployments.rollout import MINUTES_FOR_REBOOT, MINUTES_PER_UPDATE
from shared.deployments.runs_table import RunState, run_store
from shared.deployments.scheduler import FIRST_LOOKBACK, RUN_PREFIX, look_since, record_occurrences
from shared.deployments.scheduler_state import SchedulerState
from shared.deployments.selection import NO_CLASSIFICATION_DATA
from shared.deployments.steps import apply_batch_journal, check_step, start_step
from shared.governance.releases import HELD_REASON
from shared.safety.policy import SafetyPolicy
from shared.settings import Settings, load_settings

bp = df.Blueprint()
log = logging.getLogger(__name__)

ORCHESTRATOR = "deployment_run"
# One durable timer waits at most this long; a longer wait is several (the Azure Storage provider's timers
# are limited to 6 days in older extension versions: Durable Functions docs, "Timers").
MAX_TIMER = timedelta(days=6)


def utc_now() -> datetime:
    """The scheduler's clock (tests replace it with the local host's virtual clock)."""
    return datetime.now(UTC)


def adhoc_run_id(deployment: str, at: datetime) -> str:
    return f"{RUN_PREFIX}{deployment}-now-{at:%Y%m%dT%H%M%S}Z-{uuid.uuid4().hex[:6]}"


def run_input(run_id: str, definition: DeploymentDefinition, trigger: str,
              settings: Settings) -> dict[str, Any]:
    """The master's input: the run's id and its tuning from the app settings (orchestrators read none)."""
    return DeploymentRunInput(run_id=run_id, deployment=definition.name, trigger=trigger,
                              tuning=DeploymentTuning.from_settings(settings)).model_dump(mode="json")


# --- scheduler ------------------------------------------------------------------------------------


@bp.timer_trigger(schedule="%DEPLOYMENT_SCHEDULER_SCHEDULE%", arg_name="timer", run_on_startup=False)
@bp.durable_client_input(client_name="client")
async def schedule_deployments(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    """Start every due occurrence once; record the ones missed while nothing was looking."""
    settings = load_settings()
    now = utc_now()
    state = SchedulerState(table_service(settings))
    since = look_since(state.last_checked(default=now - FIRST_LOOKBACK), now)
    for due in record_occurrences(run_store(settings), deployment_store(settings).list(), since, now):
        try:
            if await start_once(client, ORCHESTRATOR, due.run_id, run_input(due.run_id, due.definition,
                                                                            "schedule", settings)):
                log.info("deployment %s: started run %s", due.definition.name, due.run_id)
        except Exception:  # one run that cannot start must not keep the others from starting
            log.exception("deployment %s: could not start run %s", due.definition.name, due.run_id)
    state.checked(now)


@bp.timer_trigger(schedule="%RUN_RECONCILER_SCHEDULE%", arg_name="timer", run_on_startup=False)
@bp.durable_client_input(client_name="client")
async def reconcile_deployment_runs(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    """Close the runs whose orchestration ended without closing them or is gone (deployments.reconcile)."""
    settings = load_settings()
    runs = open_runs(settings)
    statuses = {run.run_id: await runtime_status(client, run.run_id) for run in runs}
    for closed in reconcile(settings, runs, statuses.get, utc_now()):
        log.warning("deployment run %s closed as %s: %s; %d machines given a result", closed.run_id,
                    closed.state.value, closed.orchestration, closed.machines)


# --- orchestrators --------------------------------------------------------------------------------


def deployment_run(context: df.DurableOrchestrationContext) -> Any:
    run = DeploymentRunInput.model_validate(context.get_input())
    context.set_custom_status({"stage": "resolving"})
    while True:
        plan = RunPlan.model_validate((yield call_storage(context, "resolve_deployment_run", ResolveInput(
            run_id=run.run_id, at=context.current_utc_datetime, batch_size=run.tuning.batch_size,
        ).model_dump(mode="json"))))  # fmt: skip
        if plan.wait_until is None:
            break
        # A ring after the first: the previous ring's run bakes until then (shared.deployments.ring_bake).
        context.set_custom_status({"stage": "waiting for the previous ring's bake",
                                   "until": plan.wait_until.isoformat()})
        yield context.create_timer(min(plan.wait_until, context.current_utc_datetime + MAX_TIMER))
    if plan.error is not None:
        context.set_custom_status({"stage": "failed", "error": plan.error})
        return {"state": RunState.FAILED.value, "error": plan.error}
    assert plan.window_start is not None
    pending = [
        context.call_sub_orchestrator("deployment_batch", DeploymentBatchInput(
            run_id=run.run_id, batch=n, window_start=plan.window_start, window_minutes=plan.window_minutes,
            reboot=plan.reboot, restart_only=plan.restart_only, tuning=run.tuning,
        ).model_dump(mode="json"), batch_instance_id(run.run_id, n))
        for n in range(plan.batches)
    ]  # fmt: skip
    # The status carries what the master knows, the batches' counts as each ends; the live counters are
    # the run's row (GET /api/deployment-runs/{runId}). Copying them here cost a timer and an activity per
    # refresh, all replayed on every wake-up of the master.
    settled: dict[str, int] = {}
    context.set_custom_status(_running(plan, settled, 0))
    while pending:
        finished = yield context.task_any(pending)
        pending.remove(finished)
        for result, count in dict(finished.result).items():
            settled[result] = settled.get(result, 0) + int(count)
        context.set_custom_status(_running(plan, settled, plan.batches - len(pending)))
        yield send_log_rows(context)  # the batch's rows, queued by its activities
    summary = yield call_storage(context, "complete_deployment_run", {
        "runId": run.run_id, "at": context.current_utc_datetime.isoformat(),
    })  # fmt: skip
    yield send_log_rows(context)  # the never-started machines' rows: in Log Analytics when the run ends
    context.set_custom_status({"stage": "done", **summary})
    if not context.is_replaying:
        log.info("deployment run %s done: %s", run.run_id, summary)
    return summary


def _running(plan: RunPlan, settled: dict[str, int], batches_done: int) -> dict[str, Any]:
    """The master's status while batches run: counts only (results by status or stop reason)."""
    return {"stage": "running", "machines": plan.to_run, "batches": plan.batches, "batchesDone": batches_done,
            "batchResults": dict(sorted(settled.items()))}


def deployment_batch(context: df.DurableOrchestrationContext) -> Any:
    batch = DeploymentBatchInput.model_validate(context.get_input())
    # The batch's machines as JSON, each handed to its child so that its steps read no row for it; read in
    # parts, so no event of this history spills to a blob (MAX_BATCH_PART_CHARS).
    machines: dict[str, str | None] = {}
    safety_keys: dict[str, str] = {}  # each machine's safety policy's key, when it has one
    after: str | None = None
    key_range: tuple[str, str] | None = None  # the batch's rows' key range, as the first part answers it
    while True:
        read = BatchMachinesRead(run_id=batch.run_id, batch=batch.batch, after=after, key_range=key_range)
        part = BatchMachines.model_validate((yield call_storage(context, "read_deployment_batch",
                                                                read.model_dump(mode="json"))))
        key_range = key_range or part.key_range
        machines |= dict(zip(part.resource_ids, part.machines, strict=True))
        safety_keys |= {r: key for r, key in zip(part.resource_ids, part.safety_keys, strict=False) if key}
        if part.after is None:
            break
        after = part.after
    queue = sorted(machines)
    running: dict[Any, str] = {}
    results: dict[str, int] = {}
    ended: list[MachineRunResult] = []  # children's results the gate has not recorded yet
    others_hold_slots = True
    fruitless = 0  # claims in a row that started nothing while machines waited: asking again backs off
    while queue or running or ended:
        if queue or ended:
            ask = ClaimInput(run_id=batch.run_id, batch=batch.batch, resource_ids=tuple(queue),
                             at=context.current_utc_datetime, finished=tuple(ended), key_range=key_range)
            retry = _RECORD_RETRY if ended else STORAGE_RETRY
            claim = ClaimResult.model_validate((yield context.call_activity_with_retry(
                "claim_deployment_machines", retry, ask.model_dump(mode="json"))))
            ended = []
            for resource_id in claim.start:
                child = context.call_sub_orchestrator("deploy_machine", MachineDeploymentInput(
                    run_id=batch.run_id, resource_id=resource_id, machine=machines.get(resource_id),
                    batch=batch.batch, window_start=batch.window_start,
                    window_minutes=batch.window_minutes, reboot=batch.reboot, restart_only=batch.restart_only,
                    tuning=batch.tuning, safety_key=safety_keys.get(resource_id),
                ).model_dump(mode="json"), machine_instance_id(batch.run_id, resource_id))  # fmt: skip
                running[child] = resource_id
            if claim.not_started:
                stopped = claim.stop_reason or "not started"
                results[stopped] = results.get(stopped, 0) + len(claim.not_started)
            done = set(claim.start) | set(claim.not_started)
            queue = [] if claim.stop_reason else [r for r in queue if r not in done]
            fruitless = fruitless + 1 if queue and not claim.start else 0
            # While this batch's own children hold every slot taken, only their ends free one, and each
            # end is followed by a claim: asking in between would find nothing.
            others_hold_slots = claim.running is None or claim.running > len(running)
        ask_again = batch.tuning.slot_poll(fruitless)
        if not running:
            if queue:  # every slot is held by other batches: ask again later
                yield context.create_timer(context.current_utc_datetime + ask_again)
            continue
        waits: list[Any] = list(running)
        timer = None
        if queue and others_hold_slots:
            timer = context.create_timer(context.current_utc_datetime + ask_again)
            waits.append(timer)
        finished = yield context.task_any(waits)
        if timer is not None and finished is not timer:
            timer.cancel()
        # Every child that has ended by now is recorded by the next claim, not only the one that woke the
        # batch: children that ended while a claim was on its way share one write of the run row (fewer
        # claims, fewer conflicts on that row). A task's state here is what the history holds up to
        # this point, the same on every replay.
        for child in [child for child in running if child.is_completed]:
            resource_id = running.pop(child)
            result = MachineRunResult.model_validate(child.result)
            results[result.status] = results.get(result.status, 0) + 1
            ended.append(result.model_copy(update={"resource_id": resource_id}))
    # The scans' Machines states, reverse index, catalogue counts and rows (shared/assessment/journal.py),
    # with the installs' progress rows the machines' rows carry (steps.apply_batch_journal).
    yield call_storage(context, "apply_deployment_journal", BatchJournalApply(
        run_id=batch.run_id, batch=batch.batch, at=context.current_utc_datetime, key_range=key_range,
    ).model_dump(mode="json"))  # fmt: skip
    return results


def deploy_machine(context: df.DurableOrchestrationContext) -> Any:
    request = MachineDeploymentInput.model_validate(context.get_input())
    window = request.window()
    scan_deadline = timedelta(minutes=request.tuning.scan_deadline_minutes)
    if request.restart_only:
        return (yield from _restart_only(context, request, scan_deadline))

    prescan = yield from _step(context, request, PRESCAN, context.current_utc_datetime + scan_deadline)
    if isinstance(prescan, StepFailure):
        status = _failed_status(prescan)
        return _result(context, request, status, f"pre-scan: {prescan.code}", prescan)
    if prescan.pending == 0 and prescan.unclassified:
        return _result(context, request, MachineResultStatus.SKIPPED, NO_CLASSIFICATION_DATA)
    if prescan.pending == 0:
        return _result(context, request, MachineResultStatus.NOT_NEEDED,
                       HELD_REASON if prescan.held else "no pending update matches the deployment")
    decision = window.can_start(context.current_utc_datetime, prescan.pending, prescan.has_service_pack,
                                request.reboot)
    if not decision.ok:
        return _result(context, request, MachineResultStatus.SKIPPED, decision.reason)

    # Safe rollouts (functions/safe_rollout.py): checks before the install, the pre-patch snapshots.
    policy: SafetyPolicy | None = None
    guard: Guard | None = None
    if request.safety_key:
        read = SafetyPolicyRead(run_id=request.run_id, key=request.safety_key)
        found = yield call_storage(context, "read_safety_policy", read.model_dump(mode="json"))
        policy = SafetyPolicy.model_validate(found) if found else None
    if policy is not None:
        before = yield from before_install(context, request, policy)
        if isinstance(before, SafetyEnd):
            return _result(context, request, before.status, before.reason, safety=before)
        guard = before

    install: StepOutcome | None = None
    results_pending = False  # an Arc install whose per-update results the post-scan reads again
    for call in range(1, MAX_INSTALL_CALLS + 1):
        # The first call's start writes its intent under the row's ETag the pre-scan left (no read).
        etag = prescan.row_etag if call == 1 else None
        answer = yield from _step(context, request, install_step(call), request.install_deadline(),
                                  row_etag=etag)
        if isinstance(answer, StepFailure):
            if install is None:
                status = _failed_status(answer)
                return _result(context, request, status, f"install: {answer.code}", answer)
            break  # the first call's result stands; the second could not start
        install = answer
        results_pending = results_pending or answer.results_pending
        # Another call only for what a capped call (3 h 55 min) left while the window still has room.
        room = timedelta(minutes=MINUTES_PER_UPDATE + (MINUTES_FOR_REBOOT if request.reboot else 0))
        if install.pending == 0 or install.failed or window.time_left(context.current_utc_datetime) < room:
            break
    assert install is not None and install.status is not None
    status = MachineResultStatus(install.status)
    safety: SafetyEnd | None = None
    if policy is not None and guard is not None:
        failed = status in (MachineResultStatus.FAILED, MachineResultStatus.PARTIALLY_SUCCEEDED)
        safety = yield from after_install(context, request, policy, guard, failed, status)
        status = safety.status

    postscan = yield from _step(context, request, POSTSCAN, context.current_utc_datetime + scan_deadline,
                                results_pending=results_pending)
    reason = "" if not isinstance(postscan, StepFailure) else f"post-scan failed: {postscan.code}"
    if status is MachineResultStatus.WINDOW_EXCEEDED and not reason:
        reason = f"{install.pending} updates left pending when the window ran out"
    if prescan.held and not reason:
        reason = HELD_REASON  # a release package offered only at an untested version (the row lists it)
    if safety is not None and safety.reason:
        reason = f"{safety.reason}; {reason}" if reason else safety.reason
    return _result(context, request, status, reason, scanned=not isinstance(postscan, StepFailure),
                   safety=safety)


def _restart_only(context: df.DurableOrchestrationContext, request: MachineDeploymentInput,
                  scan_deadline: timedelta) -> Generator[Any, Any, dict[str, Any]]:
    """rebootSetting "RebootOnly": restart the machine, then a post-scan to record its new state."""
    restarted = yield from _step(context, request, RESTART, request.install_deadline())
    if isinstance(restarted, StepFailure):
        return _result(context, request, _failed_status(restarted), f"restart: {restarted.code}", restarted)
    postscan = yield from _step(context, request, POSTSCAN, context.current_utc_datetime + scan_deadline)
    reason = "" if not isinstance(postscan, StepFailure) else f"post-scan failed: {postscan.code}"
    return _result(context, request, MachineResultStatus.SUCCEEDED, reason,
                   scanned=not isinstance(postscan, StepFailure))


def _step(
    context: df.DurableOrchestrationContext, request: MachineDeploymentInput, step: str, deadline: datetime,
    results_pending: bool = False, row_etag: str | None = None,
) -> Generator[Any, Any, StepOutcome | StepFailure]:
    """Start a step, then check it on durable timers until it is done, it fails, or the deadline passes."""
    base = StepInput(run_id=request.run_id, resource_id=request.resource_id, step=step,  # type: ignore[arg-type]
                     machine=request.machine, batch=request.batch, results_pending=results_pending,
                     row_etag=row_etag)
    polled = yield from poll_operation(
        context, "start_machine_step", "check_machine_step", base, done=_step_done,
        tuning=request.tuning, deadline=deadline, subject=request.resource_id,
    )  # fmt: skip
    if polled.failing is not None:
        return StepFailure(code="TransientErrorsExhausted", message=polled.failing[:1000],
                           hint="Azure kept answering with throttling, server errors or 409 while "
                           "another patch operation ran on the machine; the next run tries again.")
    if polled.timed_out:
        return StepFailure(
            code=f"{step.capitalize()}TimedOut", message=f"no result by {deadline:%Y-%m-%d %H:%M} UTC",
            hint="Check the machine's agent and its package manager; see the step's output.",
        )
    answer = StepAnswer.model_validate(polled.answer)
    if answer.failure is not None:
        return answer.failure
    assert answer.outcome is not None
    return answer.outcome


def _step_done(answer: dict[str, Any]) -> bool:
    parsed = StepAnswer.model_validate(answer)
    return parsed.failure is not None or (not parsed.in_progress and parsed.outcome is not None)


def _failed_status(failure: StepFailure) -> MachineResultStatus:
    return MachineResultStatus.NOT_REACHABLE if failure.unreachable else MachineResultStatus.FAILED


def _result(context: df.DurableOrchestrationContext, request: MachineDeploymentInput,
            status: MachineResultStatus, reason: str, failure: StepFailure | None = None,
            scanned: bool = False, safety: SafetyEnd | None = None) -> dict[str, Any]:
    """The machine's result, for its batch to record with its next claim (one write of the run row frees
    the slot and may start the next machine); ``scanned``: the post-scan kept its output; ``safety``: what
    the health checks and a rollback found."""
    return MachineRunResult(
        status=status.value, reason=reason[:4000], resource_id=request.resource_id,
        at=context.current_utc_datetime, failure=failure, outputs=(POSTSCAN,) if scanned else (),
        health=safety.health if safety else "", rollback=safety.rollback if safety else "",
        restore_point=safety.restore_point if safety else None,
    ).model_dump(mode="json")  # fmt: skip


# Recording a machine's result must not be lost to a passing storage error: it frees the machine's slot.
_RECORD_RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=5_000, max_number_of_attempts=10)

ORCHESTRATORS = (deployment_run, deployment_batch, deploy_machine)
for _orchestrator in ORCHESTRATORS:
    bp.orchestration_trigger(context_name="context")(_orchestrator)


# --- activities -----------------------------------------------------------------------------------


@bp.activity_trigger(input_name="request")
def resolve_deployment_run(request: dict[str, Any]) -> dict[str, Any]:
    parsed = ResolveInput.model_validate(request)
    settings = load_settings()
    plan = resolve(settings, parsed.run_id, parsed.at, parsed.batch_size)
    # A run on a category ring: RingRun.Started (or .Failed when it could not start), once per run.
    notify_run_resolved(settings, parsed.run_id, parsed.at)
    return plan.model_dump(mode="json")


@bp.activity_trigger(input_name="request")
def read_safety_policy(request: dict[str, Any]) -> dict[str, Any] | None:
    """The safety policy the run resolved for a machine (by its key), as the run row keeps it."""
    read = SafetyPolicyRead.model_validate(request)
    policy = run_store(load_settings()).terms(read.run_id).policies.get(read.key)
    return policy.model_dump(mode="json") if policy is not None else None


@bp.activity_trigger(input_name="request")
def read_deployment_batch(request: dict[str, Any]) -> dict[str, Any]:
    read = BatchMachinesRead.model_validate(request)
    store = run_store(load_settings())
    return store.batch_part(read.run_id, read.batch, read.after, read.key_range).model_dump(mode="json")


@bp.activity_trigger(input_name="request")
def apply_deployment_journal(request: dict[str, Any]) -> dict[str, int]:
    """The batch's inventory journal and what its machines' rows carry for it (steps.apply_batch_journal)."""
    apply = BatchJournalApply.model_validate(request)
    return apply_batch_journal(load_settings(), apply.run_id, apply.batch, apply.at,
                               key_range=apply.key_range)


@bp.activity_trigger(input_name="request")
def claim_deployment_machines(request: dict[str, Any]) -> dict[str, Any]:
    """Record the batch's ended machines and start the ones the gate allows (finish.record_and_claim)."""
    return record_and_claim(load_settings(), ClaimInput.model_validate(request)).model_dump(mode="json")


@bp.activity_trigger(input_name="request")
def start_machine_step(request: dict[str, Any]) -> dict[str, Any]:
    """``{token}`` or ``{failure}`` (permanent); a transient error raises and the child retries."""
    return start_step(load_settings(), StepInput.model_validate(request)).model_dump(mode="json")


@bp.activity_trigger(input_name="request")
def check_machine_step(request: dict[str, Any]) -> dict[str, Any]:
    return check_step(load_settings(), StepInput.model_validate(request)).model_dump(mode="json")


@bp.activity_trigger(input_name="request")
def complete_deployment_run(request: dict[str, Any]) -> dict[str, Any]:
    at = datetime.fromisoformat(str(request["at"]))
    settings = load_settings()
    record_never_started(settings, str(request["runId"]), at)
    run = run_store(settings).complete(str(request["runId"]), at)
    notify_run_ended(settings, run, at)  # a run on a category ring: RingRun.Finished or .Failed, once
    return run_progress(run.to_json())


def run_progress(run: dict[str, Any]) -> dict[str, Any]:
    """A run's live counters as the run's row has them (the gate and the batches keep them there)."""
    keys = ("state", "machines", "started", "running", "queued", "results", "stopReason", "cancelRequested",
            "windowStart", "windowEnd")
    return {k: run[k] for k in keys}
