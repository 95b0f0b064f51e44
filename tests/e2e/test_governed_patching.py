"""Issue 13's "Done when", as one scenario on the demo fleet through the local host (local/governance_demo.py
drives it over HTTP after discovery and assessment, as ``make run`` does):

- a test-ring run of a release: the updates that installed everywhere become ``passed``, the one that failed
  (the fleet file's ``failingPatches``) ``failed`` with the reason; an operator requests approval, the same
  person approving gets 403, a second person approves with a justification; a newer version of a released
  package appears; the production run installs exactly the tested versions and holds the newer one; the
  audit of that day is clean; an unapproved install shows as unauthorized in the audit, in
  ``UpdateRunProgress_CL`` and in the ``unauthorized-installs`` alert's query;
- the audit of a past day answers what was missing then, after later assessments changed it, and marks what
  was overdue against the category's deadline (the virtual clock moves the days);
- every notification is published once, as the documented CloudEvents;
- a reader creating anything, and an operator approving, get 403.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

import pytest

from local.arm.fleet import load_fleet
from local.arm.simulation import platform_install
from local.clock import VirtualClock
from local.governance_demo import (
    APPROVER_B,
    AUDITOR,
    OPERATOR_A,
    PRODUCTION_RING,
    TEST_RING,
    Api,
    GovernanceDemo,
    quoted,
    run_governance_demo,
)
from local.stack import DEMO_FLEET, LocalStack
from shared.governance.notifications import SOURCE, EventType, schema_problems
from shared.principal import PRINCIPAL_HEADER, Role, encode_principal

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 240
FLEET = load_fleet(DEMO_FLEET)
# The demo fleet's test-ring machine that fails to install an update, and that update.
FAILING = next(m for m in FLEET.machines if m.name == "file-dc1-000")
FAILING_PACKAGE = FAILING.behaviours.failing_patches[0]
# A production machine the platform's own patching reaches later (local/arm/simulation.platform_install).
PATCHED_LATER = "web-dev-029"
OVERDUE_ELSEWHERE = "web-dc2-007"


@dataclass
class Scenario:
    stack: LocalStack
    demo: GovernanceDemo
    api: Api


def _wait_idle(stack: LocalStack) -> None:
    assert stack.durable
    stack.durable.run_until_idle(timeout=WAIT_SECONDS)


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    with LocalStack(FLEET, clock=VirtualClock()).start(serve_http=True) as stack:
        assert stack.functions and stack.api_base_url
        stack.functions.fire_timer("discover_fleet")
        _wait_idle(stack)
        stack.functions.fire_timer("assess_linux_fleet")
        stack.functions.fire_timer("assess_windows_fleet")
        _wait_idle(stack)
        demo = run_governance_demo(stack)
        assert demo is not None, "the demo fleet fits the demo"
        yield Scenario(stack, demo, Api(stack.api_base_url))


def _at(scenario: Scenario, days: int, clock_time: time) -> datetime:
    """``days`` after the demo's day, at ``clock_time`` (UTC)."""
    day = scenario.demo.started_at.date() + timedelta(days=days)
    return datetime.combine(day, clock_time, tzinfo=scenario.demo.started_at.tzinfo)


@pytest.fixture(scope="module")
def later(scenario: Scenario) -> Scenario:
    """The days after: the daily compliance run twice before the security deadline (5 days), an assessment
    after it, the platform's own patching installing the security updates on one production machine, and
    an assessment after that."""
    stack = scenario.stack
    assert isinstance(stack.clock, VirtualClock) and stack.functions and stack.arm
    for days in (4, 5):  # audits days 3 and 4: the deadline is within two days of both
        stack.clock.advance_to(_at(scenario, days, time(0, 31)))
        stack.functions.fire_timer("audit_daily_compliance")
        _wait_idle(stack)
    stack.clock.advance_to(_at(scenario, 6, time(3, 0)))
    stack.functions.fire_timer("assess_linux_fleet")
    _wait_idle(stack)
    platform_install(stack.arm.simulation, scenario.demo.resource_ids[PATCHED_LATER])
    stack.clock.advance_to(_at(scenario, 7, time(3, 0)))
    stack.functions.fire_timer("assess_linux_fleet")
    _wait_idle(stack)
    return scenario


def audit(scenario: Scenario, query: str) -> dict[str, Any]:
    return dict(scenario.api.ok(AUDITOR, "GET", f"/api/audit?{query}"))


def machine_audit(scenario: Scenario, days: int, computer: str) -> dict[str, Any]:
    day = (scenario.demo.started_at.date() + timedelta(days=days)).isoformat()
    body = audit(scenario, f"on={day}&machine={quoted(scenario.demo.resource_ids[computer])}")
    [machine] = body["machines"]
    return dict(machine)


def package(key: str) -> str:
    return key.split("=", 1)[0]


# --- the process -------------------------------------------------------------------------------------


def test_the_category_places_the_fleets_ubuntu_servers_on_its_two_rings(scenario):
    demo = scenario.demo
    assert demo.machines[FAILING.host_name] == TEST_RING
    assert set(demo.machines.values()) == {TEST_RING, PRODUCTION_RING}
    # Today's placement: the demo's last step took one machine off the test ring.
    listed = scenario.api.ok(AUDITOR, "GET", f"/api/machines?category={demo.category}&ring={TEST_RING}")
    assert sorted(m["computerName"] for m in listed["machines"]) == sorted(
        c for c, ring in demo.machines.items() if ring == TEST_RING and c != demo.unauthorized.computer)


def test_the_test_ring_run_records_passed_and_the_failure_with_its_reason(scenario):
    demo = scenario.demo
    run = demo.test_run
    assert run.state == "completed"
    assert {m.computer for m in run.machines} == {c for c, r in demo.machines.items() if r == TEST_RING}
    failing = run.machine(FAILING.host_name)
    assert [package(k) for k in failing.failed] == [FAILING_PACKAGE]
    [failed_key] = failing.failed
    failed = demo.evidence_of(failed_key)
    assert failed.state == "failed" and failed.failed == 1
    assert failed.reason and failed.reason.startswith(f"failed on {FAILING.host_name} in run {run.run_id}")
    installed = {key for m in run.machines for key in m.installed}
    for evidence in demo.evidence:
        if evidence.key == failed_key:
            continue
        if evidence.key in installed:  # installed on the test ring with no failure, and baked
            assert (evidence.state, evidence.failed) == ("passed", 0), evidence
            assert evidence.installed >= 1
        else:  # no test-ring machine needed it: never tested
            assert evidence.state == "new", evidence
    assert set(demo.candidate.items) == {e.key for e in demo.evidence}
    # The baseline is exactly what passed.
    assert set(demo.baseline.items) == {e.key for e in demo.evidence if e.state == "passed"}


def test_approval_needs_a_second_person_and_a_justification(scenario):
    demo, api = scenario.demo, scenario.api
    approval = demo.approval
    assert approval.requested_by == OPERATOR_A
    assert (approval.self_approval_status, approval.self_approval_code) == (403, "SeparationOfDuties")
    assert (approval.approved_by, approval.state) == (APPROVER_B, "approved")
    assert approval.justification
    shown = api.ok(AUDITOR, "GET", f"/api/approvals/{approval.request_id}")
    assert (shown["requestedBy"], shown["decidedBy"], shown["decisionJustification"], shown["release"]) == (
        OPERATOR_A, APPROVER_B, approval.justification, demo.baseline.name)
    assert {p["key"] for p in shown["patches"]} == set(demo.baseline.items)
    # Each update's history: who moved it, when and why.
    patch = api.ok(AUDITOR, "GET", f"/api/patches/Linux/{quoted(demo.baseline.items[0])}")
    moves = [(h["by"], h["to"]) for h in patch["history"] if h["category"] == demo.category]
    assert (OPERATOR_A, "authorized") in moves and (APPROVER_B, "approved") in moves
    assert ("system:evidence", "passed") in moves


def test_production_installs_exactly_the_tested_versions_and_holds_the_newer_one(scenario):
    demo = scenario.demo
    run, published = demo.production_run, demo.published
    assert run.state == "completed"
    assert {m.computer for m in run.machines} == {c for c, r in demo.machines.items() if r == PRODUCTION_RING}
    assert run.installed and set(run.installed) <= set(demo.baseline.items)
    assert f"{published.package}={published.tested_version}" in demo.baseline.items
    assert published.new_version != published.tested_version
    held = f"{published.package}: offered {published.new_version}, tested {published.tested_version}"
    offered = {c for c, rid in demo.resource_ids.items() if rid in published.machines}
    holding = [m for m in run.machines if m.computer in offered]
    assert holding, "a production machine was offered the newer version"
    for machine in holding:
        assert machine.held == (held,) and machine.reason == "held: version not tested", machine
        assert published.package not in {package(k) for k in machine.installed}
    assert all(not m.failed for m in run.machines)


def test_the_audit_of_that_day_is_clean(scenario):
    demo = scenario.demo
    day = demo.audit
    assert day.clean, day
    assert day.machines == len(demo.machines)
    production = [r for r in day.rows if r.ring == PRODUCTION_RING]
    assert production and {r.finding for r in production} == {"installed authorized"}
    assert {r.authorized_by for r in production if r.update in demo.production_run.installed} == {
        demo.approval.request_id}
    # The test ring's failure is its evidence, reported as such.
    assert [(r.computer, r.finding) for r in day.rows if r.finding == "failed install"] == [
        (FAILING.host_name, "failed install")]


def test_an_unapproved_install_is_unauthorized_in_the_audit_the_log_and_the_alert(scenario):
    wrong = scenario.demo.unauthorized
    assert wrong.moved_from == TEST_RING
    assert [(r.finding, r.authorized_by) for r in wrong.audit.rows if r.update == wrong.update] == [
        ("installed unauthorized", "unauthorized")]
    assert wrong.audit.count("installed unauthorized") == 1
    name, version = wrong.update.split("=", 1)
    columns = ("PackageName", "PackageVersion", "InstallationStatus", "Authorized", "AuthorizedBy")
    assert [tuple(r[c] for c in columns) for r in wrong.run_rows] == [
        (name, version, "succeeded", False, "unauthorized")]
    assert [(r["PackageName"], r["PackageVersion"], r["UpdateRunId"]) for r in wrong.alert_rows] == [
        (name, version, wrong.run_id)]


# --- the past ------------------------------------------------------------------------------------------


def test_the_audit_of_a_past_day_answers_as_it_was_and_marks_what_was_overdue(later):
    failed_key = next(e.key for e in later.demo.evidence if e.state == "failed")  # never approved: missing
    failed_package = package(failed_key)  # an overdue Linux finding names the package (the gap's key)
    # Day 6: the security deadline (5 days) has passed; the platform's patching came after.
    then = machine_audit(later, 6, PATCHED_LATER)
    overdue = {f["update"]: f for f in then["findings"] if f["finding"] == "overdue"}
    assert failed_package in overdue, then["findings"]
    assert overdue[failed_package]["deadlineDays"] == 5 and overdue[failed_package]["overdueDays"] >= 1
    assert overdue[failed_package]["missingSince"].startswith(later.demo.started_at.date().isoformat())
    # Today (day 7): a later assessment found it installed; the past day's answer above did not change.
    now = machine_audit(later, 7, PATCHED_LATER)
    assert failed_package not in {f["update"] for f in now["findings"]}
    assert now["missing"] < then["missing"]
    assert machine_audit(later, 6, PATCHED_LATER) == then
    # The day of the demo: missing, not yet overdue.
    first = machine_audit(later, 0, PATCHED_LATER)
    assert first["missing"] >= then["missing"]
    assert not [f for f in first["findings"] if f["finding"] == "overdue"]
    # Another production machine is still missing it: overdue today, by more days.
    elsewhere = machine_audit(later, 7, OVERDUE_ELSEWHERE)
    still = {f["update"]: f for f in elsewhere["findings"] if f["finding"] == "overdue"}
    assert still[failed_package]["overdueDays"] > overdue[failed_package]["overdueDays"]


# --- notifications -----------------------------------------------------------------------------------


def test_each_notification_is_published_once_as_the_documented_cloudevent(later):
    demo, stack = later.demo, later.stack
    assert stack.events and stack.webhook
    events = list(stack.events.events)
    for event in events:
        assert (event["specversion"], event["source"], event["datacontenttype"]) == (
            "1.0", SOURCE, "application/json"), event
        assert uuid.UUID(event["id"]) and event["subject"].startswith("/") and event["time"], event
        assert schema_problems(EventType(event["type"]), event["data"]) == [], event
    assert [n for n, count in Counter(e["id"] for e in events).items() if count > 1] == []
    by_type = Counter(e["type"] for e in events)

    def published(event_type: EventType, subject: str) -> list[dict[str, Any]]:
        return [e for e in events if e["type"] == event_type.value and e["subject"] == subject]

    # A critical or security version first seen: once each, with the machines needing it.
    seen = [e["subject"] for e in events if e["type"] == EventType.UPDATE_FIRST_SEEN.value]
    assert len(seen) == len(set(seen))
    failed_key = next(e.key for e in demo.evidence if e.state == "failed")
    [first] = published(EventType.UPDATE_FIRST_SEEN, f"/patches/Linux/{failed_key}")
    assert first["data"]["machinesNeeding"] >= 1 and first["data"]["classification"]
    newer = f"{demo.published.package}={demo.published.new_version}"  # assessed on day 6
    assert len(published(EventType.UPDATE_FIRST_SEEN, f"/patches/Linux/{newer}")) == 1
    # The approval: requested once, granted once, by whom and why.
    subject = f"/approvals/{demo.approval.request_id}"
    [requested] = published(EventType.APPROVAL_REQUESTED, subject)
    [granted] = published(EventType.APPROVAL_GRANTED, subject)
    asked = requested["data"]
    assert (asked["requestedBy"], asked["release"]) == (OPERATOR_A, demo.baseline.name)
    assert (granted["data"]["decidedBy"], granted["data"]["justification"]) == (
        APPROVER_B, demo.approval.justification)
    assert by_type[EventType.APPROVAL_REJECTED.value] == by_type[EventType.APPROVAL_DEFERRED.value] == 0
    # Each ring run: started once, ended once (the test ring's run had a failed install).
    for run in (demo.test_run, demo.production_run):
        subject = f"/deployments/{run.deployment}/runs/{run.run_id}"
        assert len(published(EventType.RING_RUN_STARTED, subject)) == 1, run.run_id
        ends = published(EventType.RING_RUN_FINISHED, subject) + published(EventType.RING_RUN_FAILED, subject)
        assert len(ends) == 1, ends
    assert published(EventType.RING_RUN_FINISHED, f"/deployments/{demo.production_run.deployment}/runs/"
                                                  f"{demo.production_run.run_id}")
    # The security deadline coming up: once, though two daily runs saw it.
    [deadline] = published(EventType.DEADLINE_APPROACHING,
                           f"/categories/{demo.category}/patches/Linux/{failed_key}")
    assert deadline["data"]["machinesMissing"] >= 1 and deadline["data"]["daysLeft"] <= 2
    # What the demo's record counted is what the topic received while it ran.
    assert (demo.notifications["Approval.Requested"], demo.notifications["Approval.Granted"]) == (1, 1)
    # The signed webhook got each one once too.
    assert sorted(d["event"]["id"] for d in stack.webhook.deliveries) == sorted(e["id"] for e in events)
    assert stack.webhook.bad_signatures == 0


# --- who may do what ---------------------------------------------------------------------------------


def test_a_reader_creating_anything_gets_403(scenario):
    demo, api = scenario.demo, scenario.api
    writes: list[tuple[str, str, Any]] = [
        ("POST", "/api/categories", {"name": "reader-made", "criticality": 3, "membership": {"all": True}}),
        ("PUT", f"/api/categories/{demo.category}", {"name": demo.category, "criticality": 1,
                                                      "membership": {"all": True}}),
        ("DELETE", f"/api/categories/{demo.category}", None),
        ("POST", "/api/releases", {"name": "reader-made", "category": demo.category, "from": "passed"}),
        ("DELETE", f"/api/releases/{demo.baseline.name}", None),
        ("POST", "/api/approvals", {"category": demo.category, "release": demo.baseline.name,
                                    "justification": "a reader asks"}),
        ("POST", f"/api/approvals/{demo.approval.request_id}/decision",
         {"decision": "reject", "justification": "a reader decides"}),
        ("PATCH", f"/api/patches/Linux/{quoted(demo.baseline.items[0])}",
         {"justification": "a reader edits"}),
        ("POST", "/api/deployments", {"name": "reader-made", "operatingSystem": "Linux",
                                      "targets": {"categories": [{"category": demo.category}]},
                                      "approvedOnly": True, "schedule": {"startTime": "2099-01-01T02:00:00",
                                                                         "timeZone": "UTC"}}),
        ("POST", f"/api/deployments/{demo.production_run.deployment}/runs", None),
    ]
    for method, path, body in writes:
        answer = api.call(AUDITOR, method, path, body)
        assert (answer.status, answer.code) == (403, "Forbidden"), (method, path, answer)
    assert api.ok(AUDITOR, "GET", f"/api/categories/{demo.category}")["criticality"] == 2


def test_an_operator_approving_gets_403(scenario):
    demo, api = scenario.demo, scenario.api
    operator = {PRINCIPAL_HEADER: encode_principal("oscar@contoso.com", [Role.OPERATOR])}
    answer = api.call(OPERATOR_A, "POST", f"/api/approvals/{demo.approval.request_id}/decision",
                      {"decision": "approve", "justification": "an operator decides"}, headers=operator)
    assert (answer.status, answer.code) == (403, "Forbidden"), answer
    assert "Approver" in answer.body["error"]["message"]
    shown = api.ok(AUDITOR, "GET", f"/api/approvals/{demo.approval.request_id}")
    assert (shown["state"], shown["decidedBy"]) == ("approved", APPROVER_B)
