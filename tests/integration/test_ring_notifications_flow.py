"""Ring-run and deadline notifications through the local host (HTTP -> orchestrations -> ARM stand-in) and
the Event Grid topic stand-in: a test-ring run where an update fails publishes RingRun.Started and
RingRun.Failed, a clean production-ring run Started and Finished, a run the approval rule refuses at its
start Failed alone, a run not on a category ring nothing; the daily compliance run publishes one
Deadline.Approaching per category and update. Each exactly once, with the documented schema, though the
activities that raise them run again (as a redelivered activity does) and the day is audited twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from local.arm.catalogue import lookup
from local.arm.fleet import parse_fleet
from local.stack import LocalStack
from shared.governance.audit import ComplianceRunInput
from shared.governance.notifications import SCHEMAS, SOURCE, EventType, schema_problems
from shared.settings import load_settings
from tests.integration.governance_setup import RUN_TIMEOUT, body, governed_stack, ringed_category

SUB = "77777777-7777-4777-8777-777777777777"
GROUP = "rg-ring"
CATEGORY = "ring-web"
SUDO = lookup("ubuntu-22.04", "sudo")
assert SUDO is not None


def _vm(name: str, tags: dict[str, str], **behaviours: Any) -> dict[str, Any]:
    return {"subscription": SUB, "resourceGroup": GROUP, "name": name, "kind": "azure-vm", "osType": "Linux",
            "osName": "ubuntu", "osVersion": "22.04", "location": "westeurope",
            "availableUpdates": ["openssl", "sudo"], "tags": tags, "behaviours": behaviours}  # fmt: skip


FLEET = parse_fleet({"subscriptions": [{"id": SUB}], "machines": [
    _vm("ring-test-01", {"ring": "test"}),
    _vm("ring-test-02", {"ring": "test"}, failingPatches=["sudo"]),
    _vm("ring-prod-01", {}),
    _vm("ring-plain-01", {"ring": "none"}),
]})  # fmt: skip


def rid(name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.Compute/virtualMachines/{name}"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    # Short deadlines: what a test ring leaves missing is due within the warning window.
    category = ringed_category(CATEGORY, "ring notifications", SUB, requiresApproval=False,
                               deadlines={"critical": 2, "security": 2, "other": 2})
    with governed_stack(FLEET, category) as running:
        assert running.events is not None
        yield running


def activity(stack: LocalStack, name: str) -> Any:
    """The activity's function as the host runs it (calling it again is what a redelivery does)."""
    assert stack.functions is not None
    return stack.functions.functions[name].user_function


def run(stack: LocalStack, name: str, targets: dict[str, Any]) -> str:
    spec = {"name": name, "operatingSystem": "Linux", "targets": targets, "classifications": ["Security"],
            "schedule": {"startTime": "2099-01-01T02:00:00", "timeZone": "UTC"},
            "maintenanceWindowMinutes": 180, "rebootSetting": "Never"}  # fmt: skip
    created = stack.functions.request("POST", "/api/deployments", body=spec)
    assert created.status_code == 201, created.get_body()
    started = stack.functions.request("POST", f"/api/deployments/{name}/runs")
    assert started.status_code == 202, started.get_body()
    run_id = body(started)["runId"]
    final = stack.durable.wait_for_completion(run_id, timeout=RUN_TIMEOUT)
    assert final["runtimeStatus"] == "Completed", final
    return str(run_id)


def events(stack: LocalStack, **data: Any) -> list[dict[str, Any]]:
    assert stack.events is not None
    return [e for e in stack.events.events if all(e["data"].get(k) == v for k, v in data.items())]


def documented(event: dict[str, Any]) -> None:
    """The CloudEvent as the notes document it: attributes, and data following its type's schema."""
    assert event["specversion"] == "1.0" and event["source"] == SOURCE
    assert event["datacontenttype"] == "application/json" and event["id"] and event["time"]
    event_type = EventType(event["type"])
    assert schema_problems(event_type, event["data"]) == []
    assert set(SCHEMAS[event_type].required) <= set(event["data"])


def test_a_test_ring_run_with_a_failure_publishes_started_and_failed_once(stack):
    run_id = run(stack, "ring-test-run", {"categories": [{"category": CATEGORY, "ring": "test"}]})
    published = events(stack, runId=run_id)
    assert [e["type"] for e in published] == ["PatchManagement.RingRun.Started",
                                              "PatchManagement.RingRun.Failed"]
    for event in published:
        documented(event)
        assert event["subject"] == f"/deployments/ring-test-run/runs/{run_id}"
        assert (event["data"]["category"], event["data"]["ring"]) == (CATEGORY, "test")
    started, failed = (e["data"] for e in published)
    assert started["machines"] == 2
    assert failed["reason"] == "1 of 2 machines failed" and failed["status"] == "completed"
    assert (failed["machines"], failed["succeeded"], failed["failed"]) == (2, 1, 1)
    assert failed["results"]["succeeded"] == 1 and failed["results"]["partially succeeded"] == 1
    assert failed["failedUpdates"] == [{"osType": "Linux", "key": f"sudo={SUDO.version}", "machines": 1}]

    # The activities run again (a redelivery after a lost answer): nothing is published twice.
    shown = body(stack.functions.request("GET", f"/api/deployment-runs/{run_id}"))
    resolve = activity(stack, "resolve_deployment_run")
    resolve({"run_id": run_id, "at": started["startedAt"], "batch_size": 50})
    activity(stack, "complete_deployment_run")({"runId": run_id, "at": shown["finished"]})
    assert events(stack, runId=run_id) == published


def test_a_clean_ring_run_finishes_and_a_run_not_on_a_ring_publishes_nothing(stack):
    run_id = run(stack, "ring-prod-run", {"categories": [{"category": CATEGORY, "ring": "production"}]})
    published = events(stack, runId=run_id)
    assert [e["type"] for e in published] == ["PatchManagement.RingRun.Started",
                                              "PatchManagement.RingRun.Finished"]
    for event in published:
        documented(event)
    finished = published[1]["data"]
    assert (finished["ring"], finished["status"], finished["failed"]) == ("production", "completed", 0)
    assert finished["machines"] == finished["results"]["succeeded"] + finished["results"]["not needed"]

    plain = run(stack, "ring-plain-run", {"machines": [rid("ring-plain-01")]})
    assert events(stack, runId=plain) == []


def test_a_ring_run_refused_at_its_start_publishes_failed_only(stack):
    db = {"name": "ring-db", "description": "no machine yet", "role": "db", "criticality": 1,
          "owner": {"name": "DBA", "contact": "dba@example.com"}, "priority": 2, "patchOrder": 2,
          "membership": {"tags": {"role": "db"}}, "requiresApproval": False}  # fmt: skip
    assert stack.functions.request("POST", "/api/categories", body=db).status_code == 201
    spec = {"name": "ring-db-run", "operatingSystem": "Linux", "classifications": ["Security"],
            "targets": {"categories": [{"category": "ring-db"}]},
            "schedule": {"startTime": "2099-01-01T02:00:00", "timeZone": "UTC"},
            "maintenanceWindowMinutes": 180, "rebootSetting": "Never"}  # fmt: skip
    assert stack.functions.request("POST", "/api/deployments", body=spec).status_code == 201
    # Approval becomes required after the deployment was made: the rule refuses the run at its start.
    edited = stack.functions.request("PUT", "/api/categories/ring-db", body={**db, "requiresApproval": True})
    assert edited.status_code == 200, edited.get_body()
    started = stack.functions.request("POST", "/api/deployments/ring-db-run/runs")
    assert started.status_code == 202, started.get_body()
    run_id = body(started)["runId"]
    assert stack.durable.wait_for_completion(run_id, timeout=RUN_TIMEOUT)["runtimeStatus"] == "Completed"
    published = events(stack, runId=run_id)
    assert [e["type"] for e in published] == ["PatchManagement.RingRun.Failed"]
    documented(published[0])
    data = published[0]["data"]
    assert data["status"] == "failed" and data["category"] == "ring-db" and "ring" not in data
    assert data["reason"].startswith("release: ApprovalRequired"), data["reason"]
    # Retried, the resolve answers the same failure and publishes nothing new.
    resolve = activity(stack, "resolve_deployment_run")
    again = resolve({"run_id": run_id, "at": data["failedAt"], "batch_size": 50})
    assert again["error"] == data["reason"]
    assert events(stack, runId=run_id) == published


def test_the_daily_run_warns_of_each_deadline_coming_up_once(stack):
    # After the test-ring run, ring-test-02 still misses sudo (its install failed); the category gives
    # security updates 2 days: due within the warning window of the day it was found missing.
    settings = load_settings()
    now = stack.clock.now()
    day = now.date()
    for attempt in range(2):  # the day audited twice: a second firing, every page and activity again
        instance = f"compliance-{day.isoformat()}-{attempt}"
        run_input = ComplianceRunInput(day=day, generated_at=now)
        stack.durable.start_new("daily_compliance_run", instance, run_input.model_dump(mode="json"))
        final = stack.durable.wait_for_completion(instance, timeout=RUN_TIMEOUT)
        assert final["runtimeStatus"] == "Completed", final
        assert final["output"]["deadlineNotifications"] == (1 if attempt == 0 else 0), final["output"]
    warned = [e for e in events(stack) if e["type"] == EventType.DEADLINE_APPROACHING.value]
    assert len(warned) == 1, warned
    documented(warned[0])
    data = warned[0]["data"]
    assert warned[0]["subject"] == f"/categories/{CATEGORY}/patches/Linux/sudo={SUDO.version}"
    assert (data["category"], data["key"]) == (CATEGORY, f"sudo={SUDO.version}")
    assert data["classification"].startswith("Security")  # as the inventory names it
    assert data["machinesMissing"] == 1 and data["machines"] == [rid("ring-test-02")]
    assert 0 <= data["daysLeft"] <= 2
    assert settings.event_grid_topic_endpoint == stack.events.endpoint  # type: ignore[union-attr]
