"""The light check: every 15 minutes, reassess only the machines that changed or are new.

The timer starts ``light_check_run`` (instance id from the schedule slot, so a late or doubled
firing starts nothing new). Its activity ``find_changed_machines`` lists the fleet cheaply, asks
Resource Graph what changed on it (one query burst for the whole fleet) and stores the machines to
reassess in Table Storage, as the scope of the check's assessment run; the
run then starts the ordinary ``assessment_run``, which reads that scope, and finally stores the
baseline of the machines it assessed. Only counts travel through the orchestration
(shared/assessment/light_check.py has the rules, baselines_table.py the tables).
"""

from __future__ import annotations

import logging
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from functions.durable import call_storage, current_slot, start_once
from shared.assessment import baselines_table as work
from shared.assessment.light_check import BaselineInput, ChangedMachines, FindChangedInput, LightCheckInput
from shared.assessment.messages import AssessmentRunInput, AssessmentTuning
from shared.fleet.scope import AssessmentScope
from shared.settings import load_settings

bp = df.Blueprint()
log = logging.getLogger(__name__)

RUN_PREFIX = "lightcheck-"


def instance_id_for(slot: str) -> str:
    return f"{RUN_PREFIX}{slot}"


def assessment_instance_id(check_id: str) -> str:
    return f"{check_id}-assessment"


@bp.timer_trigger(schedule="%LIGHT_CHECK_SCHEDULE%", arg_name="timer", run_on_startup=False)
@bp.durable_client_input(client_name="client")
async def light_check(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    settings = load_settings()
    instance_id = instance_id_for(current_slot(settings.light_check_schedule))
    check = LightCheckInput(
        subscription_ids=settings.target_subscription_ids,
        tuning=AssessmentTuning.from_settings(settings),
    )
    await start_once(client, "light_check_run", instance_id, check.model_dump(mode="json"))


def light_check_run(context: df.DurableOrchestrationContext) -> Any:
    check = LightCheckInput.model_validate(context.get_input())
    context.set_custom_status({"stage": "checking"})
    run_id = assessment_instance_id(context.instance_id)
    found = ChangedMachines.model_validate(
        (
            yield call_storage(
                context,
                "find_changed_machines",
                FindChangedInput(
                    check_id=context.instance_id,
                    run_id=run_id,
                    subscription_ids=check.subscription_ids,
                    at=context.current_utc_datetime,
                ).model_dump(mode="json"),
            )
        )
    )
    summary: dict[str, Any] = {
        "stage": "done",
        "listed": found.listed,
        "changed": found.changed,
        "reassessed": found.reassess,
        "adopted": found.adopted,
        "byReason": dict(found.by_reason),
        "subscriptionsFailed": list(found.subscriptions_failed),
    }
    if found.activity_error:
        summary["activityError"] = found.activity_error
    if not found.reassess:
        context.set_custom_status(summary)
        return summary
    context.set_custom_status({**summary, "stage": "assessing"})
    run = AssessmentRunInput(
        trigger="light-check",
        scope=AssessmentScope().to_json(),
        machine_ids_stored=True,  # find_changed_machines stored them under run_id
        subscription_ids=found.subscription_ids,
        tuning=check.tuning,
    )
    try:
        summary["assessment"] = yield context.call_sub_orchestrator(
            "assessment_run", run.model_dump(mode="json"), run_id
        )
    except Exception as error:  # noqa: BLE001 - machines it did assess still get their baseline
        summary["assessmentError"] = str(error)[:500]
        if not context.is_replaying:
            log.warning("light check %s: assessment run %s failed: %s", context.instance_id, run_id, error)
    summary["baselined"] = yield call_storage(
        context,
        "record_light_check_baseline",
        BaselineInput(run_id=run_id).model_dump(mode="json"),
    )
    context.set_custom_status(summary)
    if not context.is_replaying:
        log.info("light check %s done: %s", context.instance_id, summary)
    return summary


# Registered without decorating, so tests can register the same generator on a test app.
bp.orchestration_trigger(context_name="context")(light_check_run)


@bp.activity_trigger(input_name="request")
def find_changed_machines(request: dict[str, Any]) -> dict[str, Any]:
    found = work.find_changed(load_settings(), FindChangedInput.model_validate(request))
    return found.model_dump(mode="json")


@bp.activity_trigger(input_name="request")
def record_light_check_baseline(request: dict[str, Any]) -> int:
    return work.record_baseline(load_settings(), BaselineInput.model_validate(request))
