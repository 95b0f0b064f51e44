"""Patch assessment: timers and HTTP start a run; the run fans out batches, each batch one child per machine.

``assessment_run`` (master) lists the targets through an activity that keeps the list in Table
Storage, then starts one ``assessment_batch`` per batch; each batch starts one ``assessment_group`` per
ten of its machines (GROUP_SIZE), and each group one ``assess_machine`` per machine. Only counts travel
upwards, so no history grows with the fleet, and none holds more than a few dozen children's
events. A machine's child starts ``assessPatches``, waits with durable timers between one-GET checks,
retries transient errors with growing waits, bounds everything by a deadline, and records whatever
happens: it never fails its batch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator
from datetime import timedelta
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from functions.durable import (
    adhoc_instance_id,
    batch_instance_id,
    call_storage,
    current_slot,
    group_instance_id,
    machine_instance_id,
    poll_operation,
    send_log_rows,
    start_once,
)
from functions.http import error_response, read_json, requires, run_accepted
from shared.assessment import run as work
from shared.assessment.journal import journal_key
from shared.assessment.messages import (
    AssessmentActivityInput,
    AssessmentCounts,
    AssessmentRunInput,
    AssessmentStep,
    AssessmentTuning,
    BatchInput,
    BatchRead,
    BatchTargets,
    GroupInput,
    JournalApply,
    MachineAssessmentInput,
    MachineResult,
    TargetListing,
    TargetListingInput,
    machine_groups,
)
from shared.assessment.recording import apply_journal
from shared.azure.patch_operations import PermanentArmError
from shared.fleet.scope import AssessmentScope, ScopeError
from shared.model.machines import OsType
from shared.principal import Role
from shared.settings import load_settings

bp = df.Blueprint()
log = logging.getLogger(__name__)

RUN_PREFIX = "assessment-"
# The activity that applies finished batches' inventory journals (shared/assessment/journal.py), for
# assessment runs and deployment batches.
APPLY_INVENTORY_JOURNAL = "apply_inventory_journal"
# An assessment run applies its finished batches' journals ten at a time (and what is left at its end):
# ten batches (1,000 machines) share one transaction per update and subscription, and the fleet-wide
# tables lag the machines' own partitions by at most that many batches.
APPLY_EVERY_BATCHES = 10


def scheduled_instance_id(os_type: OsType, slot: str) -> str:
    return f"{RUN_PREFIX}{os_type.value.lower()}-{slot}"


async def _start_scheduled(client: df.DurableOrchestrationClient, os_type: OsType) -> None:
    settings = load_settings()
    run = AssessmentRunInput(
        trigger=f"timer-{os_type.value.lower()}",
        scope=AssessmentScope(os_type=os_type).to_json(),
        subscription_ids=settings.target_subscription_ids,
        tuning=AssessmentTuning.from_settings(settings),
    )
    linux = os_type is OsType.LINUX
    schedule = settings.assessment_schedule_linux if linux else settings.assessment_schedule_windows
    instance_id = scheduled_instance_id(os_type, current_slot(schedule))
    await start_once(client, "assessment_run", instance_id, run.model_dump(mode="json"))


@bp.timer_trigger(schedule="%ASSESSMENT_SCHEDULE_LINUX%", arg_name="timer", run_on_startup=False)
@bp.durable_client_input(client_name="client")
async def assess_linux_fleet(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    await _start_scheduled(client, OsType.LINUX)


@bp.timer_trigger(schedule="%ASSESSMENT_SCHEDULE_WINDOWS%", arg_name="timer", run_on_startup=False)
@bp.durable_client_input(client_name="client")
async def assess_windows_fleet(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    await _start_scheduled(client, OsType.WINDOWS)


@bp.route(route="assessments", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@bp.durable_client_input(client_name="client")
@requires(Role.OPERATOR)
async def start_assessment_run(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    """On-demand assessment of a scope (``{"all": true}`` for every machine); 202 with the run id and where
    to follow it."""
    settings = load_settings()
    scope = read_json(req, AssessmentScope.parse_request)
    if isinstance(scope, func.HttpResponse):
        return scope
    try:
        subscriptions = scope.subscriptions(settings.target_subscription_ids)
    except ScopeError as error:
        return error_response(400, "InvalidField", str(error), error.field)
    run = AssessmentRunInput(trigger="http", scope=scope.to_json(), subscription_ids=subscriptions,
                             tuning=AssessmentTuning.from_settings(settings))
    instance_id = await client.start_new(
        "assessment_run", adhoc_instance_id(RUN_PREFIX), run.model_dump(mode="json")
    )
    return run_accepted(instance_id)


# --- orchestrators --------------------------------------------------------------------------------


def assessment_run(context: df.DurableOrchestrationContext) -> Any:
    run = AssessmentRunInput.model_validate(context.get_input())
    context.set_custom_status({"stage": "listing"})
    listing = TargetListing.model_validate(
        (
            yield call_storage(
                context,
                "list_assessment_targets",
                TargetListingInput(
                    run_id=context.instance_id,
                    scope=run.scope,
                    subscription_ids=run.subscription_ids,
                    observed_at=context.current_utc_datetime,
                    batch_size=run.tuning.batch_size,
                    machine_ids_stored=run.machine_ids_stored,
                ).model_dump(mode="json"),
            )
        )
    )
    total = AssessmentCounts(
        machines=listing.not_assessable + listing.unsupported,
        not_assessable=listing.not_assessable,
        unsupported=listing.unsupported,
    )
    pending = {
        n: context.call_sub_orchestrator(
            "assessment_batch",
            BatchInput(run_id=context.instance_id, batch=n, tuning=run.tuning).model_dump(mode="json"),
            batch_instance_id(context.instance_id, n),
        )
        for n in range(listing.batches)
    }
    context.set_custom_status(_progress("assessing", listing, total, 0))
    # One batch at a time is folded in as it completes, so the custom status shows live progress. Finished
    # batches' journals are applied a few at a time (shared/assessment/journal.py), then their rows sent.
    unapplied: list[int] = []
    while pending:
        finished = yield context.task_any(list(pending.values()))
        batch = next(n for n, task in pending.items() if task is finished)
        del pending[batch]
        unapplied.append(batch)
        total = total.plus(AssessmentCounts.model_validate(finished.result))
        context.set_custom_status(_progress("assessing", listing, total, listing.batches - len(pending)))
        if len(unapplied) >= APPLY_EVERY_BATCHES or not pending:
            journals = tuple(journal_key(context.instance_id, n) for n in sorted(unapplied))
            yield call_storage(context, APPLY_INVENTORY_JOURNAL, JournalApply(
                journals=journals, at=context.current_utc_datetime).model_dump(mode="json"))  # fmt: skip
            unapplied = []
            yield send_log_rows(context)  # the rows just queued: the last ones are sent before the run ends
    summary = _progress("done", listing, total, listing.batches)
    context.set_custom_status(summary)
    if not context.is_replaying:
        log.info("assessment run %s done: %s", context.instance_id, summary)
    return summary


def _progress(
    stage: str, listing: TargetListing, total: AssessmentCounts, batches_done: int
) -> dict[str, Any]:
    return {
        "stage": stage,
        "inScope": listing.machines,
        "toAssess": listing.to_assess,
        "batches": listing.batches,
        "batchesDone": batches_done,
        "subscriptionsFailed": list(listing.subscriptions_failed),
        **total.model_dump(mode="json"),
    }


def assessment_batch(context: df.DurableOrchestrationContext) -> Any:
    batch = BatchInput.model_validate(context.get_input())
    machines: list[str] = []
    after: str | None = None
    while True:  # in parts, so no event of this history spills to a blob (MAX_BATCH_PART_CHARS)
        read = BatchRead(run_id=batch.run_id, batch=batch.batch, after=after)
        part = BatchTargets.model_validate((yield call_storage(context, "read_assessment_batch",
                                                               read.model_dump(mode="json"))))
        machines += part.machines
        if part.after is None:
            break
        after = part.after
    groups = [
        context.call_sub_orchestrator(
            "assessment_group",
            GroupInput(run_id=batch.run_id, batch=batch.batch, tuning=batch.tuning,
                       machines=machines_of_group).model_dump(mode="json"),
            group_instance_id(batch.run_id, batch.batch, n),
        )
        for n, machines_of_group in enumerate(machine_groups(machines))
    ]
    # Groups are folded in as each one finishes, so the batch's custom status carries live counts (every
    # GROUP_SIZE machines) that GET /api/runs/{id} adds up over the running batches (functions/runs_api.py).
    total = AssessmentCounts()
    context.set_custom_status(total.model_dump(mode="json"))
    waiting = list(groups)
    while waiting:
        finished = yield context.task_any(waiting)
        waiting = [task for task in waiting if task is not finished]
        total = total.plus(AssessmentCounts.model_validate(finished.result))
        context.set_custom_status(total.model_dump(mode="json"))
    return total.model_dump(mode="json")


def assessment_group(context: df.DurableOrchestrationContext) -> Any:
    """One child per machine of the group; only the group's counts go up to its batch."""
    group = GroupInput.model_validate(context.get_input())
    children = []
    for machine in group.machines:
        resource_id = str(json.loads(machine)["resource_id"])
        child = MachineAssessmentInput(run_id=group.run_id, batch=group.batch, resource_id=resource_id,
                                       tuning=group.tuning, machine=machine)
        children.append(context.call_sub_orchestrator(
            "assess_machine", child.model_dump(mode="json"), machine_instance_id(group.run_id, resource_id)))
    results = yield context.task_all(children)
    total = AssessmentCounts()
    for result in results:
        total = total.plus(AssessmentCounts.of(MachineResult.model_validate(result)))
    return total.model_dump(mode="json")


def assess_machine(context: df.DurableOrchestrationContext) -> Any:
    request = MachineAssessmentInput.model_validate(context.get_input())
    tuning = request.tuning
    deadline = context.current_utc_datetime + timedelta(minutes=tuning.deadline_minutes)
    base = AssessmentActivityInput(
        run_id=request.run_id, batch=request.batch, resource_id=request.resource_id, machine=request.machine
    )

    polled = yield from poll_operation(
        context, "start_assessment", "check_assessment", base, done=_assessed,
        tuning=tuning, deadline=deadline, subject=request.resource_id,
    )  # fmt: skip
    if polled.failing is not None:  # recorded with the request of the call that kept failing
        failed_call = base.model_copy(update={"token": polled.token})
        return (yield from _record_failure(context, failed_call, "TransientErrorsExhausted",
                                           polled.failing[:1000]))
    if polled.timed_out:
        message = f"no result within {tuning.deadline_minutes} minutes (ASSESSMENT_DEADLINE_MINUTES)"
        return (yield from _record_failure(context, base, "AssessmentTimedOut", message))
    if "recorded" in polled.answer:  # start_assessment recorded a permanent error
        return polled.answer["recorded"]
    result = AssessmentStep.model_validate(polled.answer).result
    assert result is not None
    return result.model_dump(mode="json")


def _assessed(answer: dict[str, Any]) -> bool:
    step = AssessmentStep.model_validate(answer)
    return not step.in_progress and step.result is not None


def _record_failure(
    context: df.DurableOrchestrationContext, request: AssessmentActivityInput, code: str, message: str
) -> Generator[Any, Any, dict[str, Any]]:
    payload = request.model_copy(
        update={
            "at": context.current_utc_datetime,
            "failure_code": code,
            "failure_message": message,
        }
    ).model_dump(mode="json")
    try:
        return dict((yield call_storage(context, "record_assessment_failure", payload)))
    except Exception:  # noqa: BLE001 - even an unrecordable failure must not fail the batch
        return MachineResult(state="failed").model_dump(mode="json")


# Registered without decorating, so the module keeps the plain generators and tests can register
# the same code on a test app with stand-in activities.
ORCHESTRATORS = (assessment_run, assessment_batch, assessment_group, assess_machine)
for _orchestrator in ORCHESTRATORS:
    bp.orchestration_trigger(context_name="context")(_orchestrator)


# --- activities -----------------------------------------------------------------------------------


@bp.activity_trigger(input_name="request")
def list_assessment_targets(request: dict[str, Any]) -> dict[str, Any]:
    listing = work.list_targets(load_settings(), TargetListingInput.model_validate(request))
    return listing.model_dump(mode="json")


@bp.activity_trigger(input_name="request")
def read_assessment_batch(request: dict[str, Any]) -> dict[str, Any]:
    read = BatchRead.model_validate(request)
    return work.batch_targets(load_settings(), read.run_id, read.batch, read.after).model_dump(mode="json")


@bp.activity_trigger(input_name="request")
def apply_inventory_journal(request: dict[str, Any]) -> dict[str, int]:
    journal = JournalApply.model_validate(request)
    return apply_journal(load_settings(), journal.journals, journal.at)


@bp.activity_trigger(input_name="request")
def start_assessment(request: dict[str, Any]) -> dict[str, Any]:
    """Returns ``{"token"}``; a permanent error is recorded and returned as ``{"recorded"}``;
    a transient one raises, and the orchestrator retries after a durable timer."""
    parsed = AssessmentActivityInput.model_validate(request)
    settings = load_settings()
    try:
        return {"token": work.start_assessment(settings, parsed)}
    except PermanentArmError as error:
        return {
            "recorded": work.record_machine_failure(settings, parsed, error.failure).model_dump(mode="json")
        }


@bp.activity_trigger(input_name="request")
def check_assessment(request: dict[str, Any]) -> dict[str, Any]:
    parsed = AssessmentActivityInput.model_validate(request)
    settings = load_settings()
    try:
        result = work.check_assessment(settings, parsed)
    except PermanentArmError as error:
        result = work.record_machine_failure(settings, parsed, error.failure)
    return AssessmentStep(in_progress=result is None, result=result).model_dump(mode="json")


@bp.activity_trigger(input_name="request")
def record_assessment_failure(request: dict[str, Any]) -> dict[str, Any]:
    parsed = AssessmentActivityInput.model_validate(request)
    settings = load_settings()
    return work.record_machine_failure(settings, parsed, work.failure_from_request(parsed)).model_dump(
        mode="json"
    )
