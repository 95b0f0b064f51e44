"""Assessment end to end: timers and HTTP -> orchestrations -> ARM stand-in -> recorded inventory."""

from __future__ import annotations

import json
import time

import pytest

from local.arm.fleet import load_fleet
from local.stack import DEMO_FLEET, LocalStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack():
    with LocalStack(load_fleet(DEMO_FLEET)).start() as running:
        yield running


def _runs(stack, prefix):
    return [
        i for i in stack.durable.list_instances()
        if i["instanceId"].startswith(prefix) and i["name"] == "assessment_run"
    ]


def _machines(stack):
    body = json.loads(stack.functions.request("GET", "/api/machines").get_body())
    return {m["resourceId"].rsplit("/", 1)[1]: m for m in body["machines"]}


def _by_behaviour(stack, behaviour):
    return [m.name for m in stack.fleet.machines if m.tags.get("simulated") == behaviour]


@pytest.fixture(scope="module")
def scheduled(stack):
    """Both scheduled assessments, the Linux timer fired twice for its slot."""
    stack.functions.fire_timer("assess_linux_fleet")
    stack.functions.fire_timer("assess_linux_fleet", past_due=True)
    stack.functions.fire_timer("assess_windows_fleet")
    finals = {}
    for os_name in ("linux", "windows"):
        runs = _runs(stack, f"assessment-{os_name}-")
        assert len(runs) == 1, f"one {os_name} run per slot, got {[r['instanceId'] for r in runs]}"
        finals[os_name] = stack.durable.wait_for_completion(runs[0]["instanceId"], timeout=120)
    return finals


def test_the_timers_assess_the_whole_fleet_once_per_slot(stack, scheduled):
    for final in scheduled.values():
        assert final["runtimeStatus"] == "Completed", final["output"]
        assert final["customStatus"]["stage"] == "done"
    total = sum(f["output"]["machines"] for f in scheduled.values())
    assert total == len(stack.fleet.machines)
    by_os = {os: sum(1 for m in stack.fleet.machines if m.os_type.lower() == os) for os in scheduled}
    assert {os: f["output"]["machines"] for os, f in scheduled.items()} == by_os
    assessed = sum(f["output"]["assessed"] for f in scheduled.values())
    skipped = sum(
        f["output"][k] for f in scheduled.values() for k in ("failed", "not_assessable", "unsupported")
    )
    assert assessed + skipped == total and assessed >= total - 6
    judged = sum(f["output"]["compliant"] + f["output"]["non_compliant"] + f["output"]["compliance_unknown"]
                 for f in scheduled.values())
    assert judged == assessed


def test_each_hard_machine_ends_in_the_right_recorded_state(stack, scheduled):
    machines = _machines(stack)
    for name in _by_behaviour(stack, "throttled") + _by_behaviour(stack, "transient-errors"):
        assert machines[name]["readiness"] == "Ready", machines[name]
        assert machines[name]["lastAssessed"]
    for name in _by_behaviour(stack, "unreachable"):
        machine = machines[name]
        assert machine["readiness"] == "Failed"
        assert machine["lastError"] and machine["lastErrorHint"]
        assert "agent" in machine["lastErrorHint"].lower()
    for name in _by_behaviour(stack, "deallocated"):
        assert machines[name]["readiness"] == "NotAssessable"
    for name in _by_behaviour(stack, "windows-10"):
        assert machines[name]["readiness"] == "Unsupported"
    # Not-assessable machines never reached ARM's assessPatches.
    for name in _by_behaviour(stack, "deallocated"):
        assert stack.arm.count(method="POST", machine=name, path_contains="assessPatches") == 0
    # The throttled machine really was throttled (and azure-core's Retry-After retries got it through).
    for name in _by_behaviour(stack, "throttled"):
        assert stack.arm.count(status=429, machine=name) > 0


def test_run_progress_is_served_by_the_api(stack, scheduled):
    run_id = _runs(stack, "assessment-linux-")[0]["instanceId"]
    status = json.loads(stack.functions.request("GET", f"/api/runs/{run_id}").get_body())
    assert status["status"] == "Completed"
    assert status["result"]["assessed"] == scheduled["linux"]["output"]["assessed"]


def test_an_on_demand_assessment_covers_only_its_scope(stack, scheduled):
    group = "rg-mq-test"
    in_group = [m.name for m in stack.fleet.machines if m.resource_group == group]
    response = stack.functions.request("POST", "/api/assessments", body={"resourceGroups": [group]})
    assert response.status_code == 202
    run_id = json.loads(response.get_body())["runId"]
    final = stack.durable.wait_for_completion(run_id, timeout=120)
    assert final["runtimeStatus"] == "Completed"
    assert final["output"]["machines"] == len(in_group)
    children = [i for i in stack.durable.list_instances()
                if i["name"] == "assess_machine" and i["instanceId"].startswith(run_id)]
    assert {c["input"]["resource_id"].rsplit("/", 1)[1] for c in children} <= set(in_group)
    assert len(children) == final["output"]["machines"] - final["output"]["not_assessable"]


def test_bad_assessment_requests_name_the_field(stack):
    for body, field in (
        ({"osType": "Solaris"}, "osType"),
        ({"resourceGroup": ["x"]}, "resourceGroup"),
        ({"subscriptionIds": ["99999999-9999-9999-9999-999999999999"]}, "subscriptionIds"),
        ({"machineIds": ["/not/a/machine"]}, "machineIds"),
    ):
        response = stack.functions.request("POST", "/api/assessments", body=body)
        assert response.status_code == 400, body
        assert json.loads(response.get_body())["error"]["field"] == field


def test_host_restarts_during_an_assessment_leave_every_row_in_log_analytics_once(stack, scheduled):
    """Each restart redelivers the activities in flight, which record and queue their rows again: the
    outbox keeps one copy per RecordId, and the run's sender uploads it once."""
    groups = ["rg-sql-prod", "rg-arc-dc1", "rg-arc-dc2", "rg-api-prod", "rg-web-prod"]
    response = stack.functions.request("POST", "/api/assessments", body={"resourceGroups": groups})
    run_id = json.loads(response.get_body())["runId"]
    restarts = redelivered = 0
    while restarts < 8:
        status = stack.durable.get_status(run_id)
        if status and status["runtimeStatus"] in ("Completed", "Failed", "Terminated"):
            break
        redelivered += len(stack.durable.simulate_host_restart().redelivered_tasks)
        restarts += 1
        time.sleep(0.2)
    final = stack.durable.wait_for_completion(run_id, timeout=120)
    assert final["runtimeStatus"] == "Completed", final
    assert restarts >= 2 and redelivered > 0, (restarts, redelivered)
    for table in ("Update_CL", "UpdateSummary_CL"):
        query = f'{table} | where AssessmentRunId == "{run_id}" | summarize n = count() by RecordId'
        rows = stack.logs.query(query)
        # Update_CL carries only what changed since the day's first scan (earlier tests scanned these
        # machines today), so it may have no row; UpdateSummary_CL has one per machine.
        assert (rows or table == "Update_CL") and {r["n"] for r in rows} <= {1}, table
    query = f'UpdateSummary_CL | where AssessmentRunId == "{run_id}" | summarize n = count() by Computer'
    summaries = stack.logs.query(query)
    assessed = final["output"]["assessed"] + final["output"]["failed"] + final["output"]["timed_out"]
    assert len(summaries) >= assessed and {r["n"] for r in summaries} == {1}
