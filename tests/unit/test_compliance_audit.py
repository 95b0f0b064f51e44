"""The daily compliance run: which day a firing audits, and the run paging through the fleet."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import azure.durable_functions as df
import pytest

from functions import compliance_audit
from local.clock import VirtualClock
from local.durable.runner import DurableRunner
from shared.governance.audit import CompliancePageInput, CompliancePageResult, ComplianceRunInput

SCHEDULE = "0 30 0 * * *"


@pytest.mark.parametrize("fired_at", [
    datetime(2026, 3, 2, 0, 30, 0, tzinfo=UTC),
    datetime(2026, 3, 2, 0, 29, 58, tzinfo=UTC),  # a moment early: clock skew between workers
    datetime(2026, 3, 2, 6, 0, tzinfo=UTC),  # late (past due) after an outage
])  # fmt: skip
def test_each_firing_audits_the_day_before_its_slot_under_one_id(fired_at):
    instance_id, run = compliance_audit.run_for(SCHEDULE, fired_at)
    assert instance_id == "compliance-2026-03-01"
    slot = datetime(2026, 3, 2, 0, 30, tzinfo=UTC)
    assert run == ComplianceRunInput(day=date(2026, 3, 1), generated_at=slot)


app = df.DFApp()
app.orchestration_trigger(context_name="context")(compliance_audit.daily_compliance_run)
# A page's token -> (the next token, machines, machines overdue).
PAGES = {None: ("t1", 500, 3), "t1": ("t2", 500, 0), "t2": (None, 42, 1)}
SEEN: dict[str, list[Any]] = {}


@app.activity_trigger(input_name="request")
def record_compliance_page(request: dict[str, Any]) -> dict[str, Any]:
    page = CompliancePageInput.model_validate(request)
    SEEN.setdefault("pages", []).append(page)
    following, machines, overdue = PAGES[page.token]
    return CompliancePageResult(machines=machines, queued=machines, overdue_machines=overdue,
                                unauthorized_machines=0, next_token=following).model_dump(mode="json")


@app.activity_trigger(input_name="request")
def notify_deadlines_approaching(request: dict[str, Any]) -> int:
    SEEN.setdefault("deadlines", []).append(ComplianceRunInput.model_validate(request))
    return 2


@app.activity_trigger(input_name="request")
def send_log_rows(request: dict[str, Any]) -> dict[str, Any]:
    SEEN.setdefault("sent", []).append(request)
    return {}


def test_the_run_audits_the_fleet_page_by_page_and_sends_the_rows_once():
    SEEN.clear()
    run = ComplianceRunInput(day=date(2026, 3, 1), generated_at=datetime(2026, 3, 2, 0, 30, tzinfo=UTC))
    with DurableRunner(app, VirtualClock(), activity_concurrency=1) as runner:
        runner.start_new("daily_compliance_run", "compliance-2026-03-01", run.model_dump(mode="json"))
        final = runner.wait_for_completion("compliance-2026-03-01", timeout=30)
    assert final["runtimeStatus"] == "Completed", final
    assert [p.token for p in SEEN["pages"]] == [None, "t1", "t2"]
    assert {(p.day, p.generated_at) for p in SEEN["pages"]} == {(run.day, run.generated_at)}
    assert len(SEEN["sent"]) == 1
    assert SEEN["deadlines"] == [run]  # once, after the last page: the day's warnings merged and notified
    assert final["output"] == {"day": "2026-03-01", "machines": 1042, "queued": 1042, "overdueMachines": 4,
                               "unauthorizedMachines": 0, "pages": 3, "deadlineNotifications": 2}
