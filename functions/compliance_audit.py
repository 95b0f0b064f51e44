"""The daily compliance rows: once a day, each machine's audit of the day before as a ``PatchCompliance_CL``
row (shared/governance/audit.py has the rules and the row, audit_inputs.py the reads).

The timer starts ``daily_compliance_run`` with the audited day in its instance id, so a late or doubled
firing starts nothing new; the run audits the fleet a page of machines per activity call (each page's
rows queued in the log outbox, with RecordIds from machine and day, so a retried page queues nothing
twice) and sends the rows at its end. Only counts and the page token travel through the orchestration.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from functions.durable import call_storage, send_log_rows, start_once
from shared.governance import audit_inputs
from shared.governance.audit import CompliancePageInput, CompliancePageResult, ComplianceRunInput, end_of_day
from shared.governance.deadline_warnings import notify_approaching
from shared.settings import load_settings
from shared.timer_slots import schedule_slot

bp = df.Blueprint()
log = logging.getLogger(__name__)

RUN_PREFIX = "compliance-"


def instance_id_for(day: str) -> str:
    return f"{RUN_PREFIX}{day}"


def run_for(schedule: str, fired_at: datetime) -> tuple[str, ComplianceRunInput]:
    """The run a firing starts: the day before its schedule slot, under an id naming that day (a late or a
    doubled firing names the same day, so starts nothing new)."""
    slot = schedule_slot(schedule, fired_at)
    run = ComplianceRunInput(day=(slot - timedelta(days=1)).date(), generated_at=slot)
    return instance_id_for(run.day.isoformat()), run


@bp.timer_trigger(schedule="%COMPLIANCE_AUDIT_SCHEDULE%", arg_name="timer", run_on_startup=False)
@bp.durable_client_input(client_name="client")
async def audit_daily_compliance(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    instance_id, run = run_for(load_settings().compliance_audit_schedule, datetime.now(UTC))
    await start_once(client, "daily_compliance_run", instance_id, run.model_dump(mode="json"))


def daily_compliance_run(context: df.DurableOrchestrationContext) -> Any:
    run = ComplianceRunInput.model_validate(context.get_input())
    summary: dict[str, Any] = {"day": run.day.isoformat(), "machines": 0, "queued": 0, "overdueMachines": 0,
                               "unauthorizedMachines": 0, "pages": 0}
    token: str | None = None
    while True:
        request = CompliancePageInput(day=run.day, generated_at=run.generated_at, token=token)
        page = CompliancePageResult.model_validate(
            (yield call_storage(context, "record_compliance_page", request.model_dump(mode="json")))
        )
        summary["pages"] += 1
        summary["machines"] += page.machines
        summary["queued"] += page.queued
        summary["overdueMachines"] += page.overdue_machines
        summary["unauthorizedMachines"] += page.unauthorized_machines
        context.set_custom_status(summary)
        token = page.next_token
        if not token:
            break
    # The deadlines coming up that the pages found: one Deadline.Approaching per category and update.
    summary["deadlineNotifications"] = int((yield call_storage(context, "notify_deadlines_approaching",
                                                               run.model_dump(mode="json"))))
    yield send_log_rows(context)
    if not context.is_replaying:
        log.info("daily compliance %s: %s", context.instance_id, summary)
    return summary


# Registered without decorating, so tests can register the same generator on a test app.
bp.orchestration_trigger(context_name="context")(daily_compliance_run)


@bp.activity_trigger(input_name="request")
def record_compliance_page(request: dict[str, Any]) -> dict[str, Any]:
    page = audit_inputs.record_compliance_page(load_settings(), CompliancePageInput.model_validate(request))
    return page.model_dump(mode="json")


@bp.activity_trigger(input_name="request")
def notify_deadlines_approaching(request: dict[str, Any]) -> int:
    """The day's Deadline.Approaching notifications (shared.governance.deadline_warnings); how many new."""
    run = ComplianceRunInput.model_validate(request)
    return notify_approaching(load_settings(), run.day, end_of_day(run.day), run.generated_at)
