"""Done-when of issue 5's workbook and alert rules: every query of the Update Management workbook and
of the alert rules runs through the real LogsQueryClient against the local Log Analytics after the
demo fleet's discovery, assessments and an update run, and returns what the fleet and the API say;
the local workbook page renders every view with data in headless Chromium (screenshots under
``tests/artifacts/``)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import duckdb
import duckdb_kql
import pytest

from local.arm.fleet import load_fleet
from local.loganalytics.store import DUCKDB_TYPES
from local.rollout_demo import RolloutDemo, run_rollout_demo
from local.stack import DEMO_FLEET, REPO_ROOT, LocalStack
from local.workbook import load_workbook, logs_runner_for, run_query_item, workbook_server_for
from local.workbook.evaluate import ResultTable, resolve_parameters
from local.workbook.model import QueryItem
from local.workbook.parameters import substitute
from shared.azure.log_outbox import log_outbox
from shared.deployments.results import MachineResultStatus
from shared.deployments.rollout import REASON_CANCELLED, REASON_ERROR_BUDGET, REASON_WINDOW_CLOSING
from shared.deployments.runs_table import STATUS_COLUMNS
from shared.governance.audit import ComplianceRunInput
from shared.governance.patch_refs import PatchRef
from shared.governance.patches import Action, PatchState
from shared.governance.patches_table import patch_inventory
from shared.log_tables import TABLES, LogTable
from shared.model.install_outcome import InstallationState, InstallOutcome, PatchInstallResult
from shared.model.machines import OsType
from shared.principal import Role
from shared.settings import load_settings

pytestmark = pytest.mark.e2e

ALERT_RULES_FILE = REPO_ROOT / "infra" / "alerts" / "alert-rules.json"
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
TABS = ("overview", "machines", "missing", "deployments", "governance")
# What the alert rules promise (their descriptions name the same figures).
OVERDUE_AFTER = timedelta(days=14)
MAX_ASSESSMENT_AGE = timedelta(hours=24)
AUTOMATIC_PATCH_MODES = {"AutomaticByOS", "AutomaticByPlatform"}
PRODUCTION_TAG_NAME = "env"  # matched ignoring case, as Azure matches tag names
PRODUCTION_TAG_VALUES = {"prod", "production"}  # matched ignoring case
REQUIRED_CLASSIFICATIONS = {"Critical Updates", "Security Updates"}
# Seconds each Chromium run may take (a cold start here takes about 5 s).
CHROMIUM_SECONDS = 90
RUN_TIMEOUT = 240
# Machine results the failed-machines alert reports.
FAILED_RESULTS = {MachineResultStatus.FAILED.value, MachineResultStatus.PARTIALLY_SUCCEEDED.value}
# Why the rollout gate records a waiting machine as never started.
GATE_STOP_REASONS = {REASON_ERROR_BUDGET, REASON_WINDOW_CLOSING, REASON_CANCELLED}


# --- the data: discovery, both assessments, one update run ----------------------------------------


@pytest.fixture(scope="module")
def stack():
    with LocalStack(load_fleet(DEMO_FLEET)).start(serve_http=True) as running:
        running.functions.fire_timer("discover_fleet")
        _wait_all(running)
        running.functions.fire_timer("assess_linux_fleet")
        running.functions.fire_timer("assess_windows_fleet")
        _wait_all(running)
        yield running


def _wait_all(stack: LocalStack) -> None:
    for instance in stack.durable.list_instances():
        final = stack.durable.wait_for_completion(instance["instanceId"], timeout=120)
        assert final["runtimeStatus"] == "Completed", final


@dataclass(frozen=True)
class UpdateRun:
    name: str
    run_id: str
    outcomes: dict[str, InstallOutcome]  # by computer name
    machines: dict[str, dict[str, Any]]  # every machine of the run as the API shows it, by computer name

    def statuses(self) -> dict[str, str]:
        return {c: m["status"] for c, m in self.machines.items()}

    def gate_stopped(self) -> set[str]:
        """Machines the rollout gate recorded as never started (their Log Analytics rows are sent by
        the claim activity; see test_deployment_views_show_every_machine_of_the_run_with_its_result)."""
        return {
            c for c, m in self.machines.items() if m["startedAt"] is None and m["reason"] in GATE_STOP_REASONS
        }


@pytest.fixture(scope="module")
def update_run(stack) -> UpdateRun:
    """A real update deployment run over the HTTP API (as ``make run`` does): the production
    subscription's Linux machines, critical and security updates. Each machine's install outcome is
    read back from the run's stored output, so the views are checked against what really ran."""
    name = "prod-linux-security"
    production = stack.fleet.subscriptions[0].id
    spec = {
        "name": name, "operatingSystem": "Linux",
        "targets": {"groups": [{"filter": {"subscriptionIds": [production]}}], "evaluateGroupsAt": "run"},
        "classifications": ["Critical and security updates"],
        "schedule": {"startTime": "2099-01-12T02:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 120, "rebootSetting": "Never",
    }  # fmt: skip
    created = stack.functions.request("POST", "/api/deployments", body=spec)
    assert created.status_code == 201, created.get_body()
    started = stack.functions.request("POST", f"/api/deployments/{name}/runs")
    run_id = json.loads(started.get_body())["runId"]
    final = stack.durable.wait_for_completion(run_id, timeout=RUN_TIMEOUT)
    assert final["runtimeStatus"] == "Completed", final
    outcomes = {}
    machines = _api(stack, f"/api/deployment-runs/{run_id}")["machines"]
    for machine in machines:
        if "install1" in machine["outputs"]:
            link = f"/api/deployment-runs/{run_id}/machines/{machine['machine']}/outputs/install1"
            stored = _api(stack, link)
            outcomes[machine["computer"]] = _outcome(stored)
    assert outcomes, "the run installed nothing"
    # Someone looks a minute later (a query timespan ends just before "now").
    stack.clock.advance(timedelta(minutes=1))
    return UpdateRun(name, run_id, outcomes, {m["computer"]: m for m in machines})


@dataclass(frozen=True)
class Governance:
    request: dict[str, Any]  # the approval request waiting in the queue
    audit: dict[str, Any]  # GET /api/audit for the audited day, the whole fleet


@pytest.fixture(scope="module")
def governance(stack, update_run) -> Governance:
    """After the run: an operator's approval request for one missing update in a category (evidence passed
    first), and the daily compliance run for today, as the timer starts it for the day before."""
    settings = load_settings()
    now = stack.clock.now()
    kb = next(u["kbId"] for u in _api(stack, "/api/updates/missing")["updates"] if u["kbId"])
    ref = PatchRef(OsType.WINDOWS, kb=kb)
    patches = patch_inventory(settings)
    patches.record_evidence_result(ref, "web", PatchState.IN_TEST, None, now)
    patches.record_evidence_result(ref, "web", PatchState.PASSED, None, now)
    patches.change(ref, "web", Action.AUTHORIZE, "olga", now, "fixes the web tier's TLS",
                   roles=[Role.OPERATOR], request_id="req-e2e")
    assert not log_outbox(settings).send_pending("e2e-governance", now).errors
    day = now.date()
    run = ComplianceRunInput(day=day, generated_at=now)
    instance = stack.durable.start_new("daily_compliance_run", "compliance-e2e", run.model_dump(mode="json"))
    final = stack.durable.wait_for_completion(instance, timeout=RUN_TIMEOUT)
    assert final["runtimeStatus"] == "Completed", final
    stack.clock.advance(timedelta(minutes=1))
    request = {"AssetCategory": "web", "PatchKey": ref.key, "OSType": "Windows", "RequestedBy": "olga",
               "RequestId": "req-e2e", "Justification": "fixes the web tier's TLS"}
    return Governance(request, _api(stack, f"/api/audit?on={day.isoformat()}&pageSize=1000"))


def _outcome(stored: dict[str, Any]) -> InstallOutcome:
    """An install outcome from its stored JSON form (``dataclasses.asdict`` of InstallOutcome)."""
    patches = tuple(
        PatchInstallResult(**(p | {"classifications": tuple(p["classifications"]),
                                   "state": InstallationState(p["state"])}))
        for p in stored["patches"] or ()
    )  # fmt: skip
    started = stored["started_at"]
    stored = {k: v for k, v in stored.items() if k != "source"}  # where the result came from
    return InstallOutcome(**(stored | {"patches": patches if stored["patches"] is not None else None,
                                       "started_at": datetime.fromisoformat(started) if started else None}))


def _api(stack: LocalStack, path: str) -> Any:
    response = stack.functions.request("GET", path)
    assert response.status_code == 200, response.get_body()
    return json.loads(response.get_body())


# --- running the workbook and the alert rules -------------------------------------------------------


@pytest.fixture(scope="module")
def workbook():
    return load_workbook()


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    return json.loads(ALERT_RULES_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def runner(stack):
    opened = logs_runner_for(stack)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def rollout(stack, update_run, governance) -> RolloutDemo:
    """make run's safe-rollout step (local/rollout_demo.py): one machine rolled back, two stopped by the
    health gate, for the Rollbacks view."""
    demo = run_rollout_demo(stack)
    assert demo is not None and demo.rolled_back is not None
    stack.clock.advance(timedelta(minutes=1))  # the views' time range ends at now: the run's rows are inside
    assert not log_outbox(load_settings()).send_pending("e2e-rollout", stack.clock.now()).errors
    return demo


@pytest.fixture(scope="module")
def results(stack, update_run, governance, rollout, workbook, runner) -> dict[str, ResultTable]:
    """Every workbook query with the default parameters (last 7 days, every subscription, OS, environment)."""
    values = resolve_parameters(workbook, {}, runner, stack.clock.now()).values
    return {
        item.name: run_query_item(item, values, runner, stack.clock.now()) for item in workbook.query_items()
    }


@pytest.fixture(scope="module")
def fired(stack, update_run, governance, alert_rules, runner) -> dict[str, ResultTable]:
    """Each alert query over its window, as the alert service runs it: now, or, for the run-failure
    rule (a one-hour window), at its first evaluation after the run's failed updates were written."""
    failed_at = max(r["TimeGenerated"] for r in stack.logs.query(
        'UpdateRunMachine_CL | where Status in ("failed", "partially succeeded")'
    ))  # fmt: skip
    results = {}
    for rule in alert_rules:
        window = _iso_duration(rule["windowSize"])
        timespan: Any = window
        if "UpdateRunMachine_CL" in rule["query"]:
            end = failed_at + _iso_duration(rule["evaluationFrequency"])
            timespan = (end - window, end)
        results[rule["name"]] = runner.run(rule["query"], timespan)
    return results


def _iso_duration(text: str) -> timedelta:
    match = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?", text)
    assert match and text not in ("P", "PT"), f"{text!r} is not a days/hours/minutes ISO 8601 duration"
    days, hours, minutes = (int(g or 0) for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes)


@pytest.fixture(scope="module")
def machines(stack) -> list[dict[str, Any]]:
    return _api(stack, "/api/machines")["machines"]


@pytest.fixture(scope="module")
def missing(stack) -> list[dict[str, Any]]:
    """Non-optional missing updates from the inventory API, each with the machines that need it."""
    updates = [u for u in _api(stack, "/api/updates/missing")["updates"] if not u["optional"]]
    for update in updates:
        update["computers"] = {m["computerName"] for m in _api(stack, update["machines"])["machines"]}
    return updates


# The API's compliance values as the workbook labels them.
_COMPLIANCE_LABELS = {"Compliant": "Compliant", "NonCompliant": "Non-compliant", "Unknown": "Unknown"}


def _state(machine: dict[str, Any]) -> str:
    if machine["compliance"] is not None:
        return _COMPLIANCE_LABELS[machine["compliance"]]
    return f"Not assessed: {machine['readiness']}" if machine["readiness"] else "Not assessed yet"


EXPECTED_COLUMNS = {
    "fleet-compliance": ["Compliance", "Machines", "Share"],
    "machines-by-state": ["State", "Machines"],
    "missing-by-classification": ["Classification", "Updates", "Machines"],
    "machines-table": [
        "Computer",
        "OSType",
        "OSName",
        "Environment",
        "SubscriptionId",
        "PatchMode",
        "PowerState",
        "Compliance",
        "LastAssessed",
        "Readiness",
        "LastError",
        "Critical",
        "Security",
        "Other",
        "Optional",
        "Total",
        "RestartPending",
    ],
    "missing-updates": [
        "UpdateTitle",
        "KBID",
        "Classification",
        "OSType",
        "Machines",
        "Computers",
        "PublishedDate",
    ],
    "missing-by-machine": [
        "Computer",
        "UpdateTitle",
        "KBID",
        "PackageName",
        "PackageVersion",
        "Classification",
        "PublishedDate",
        "RebootBehavior",
    ],
    "update-runs": [
        "UpdateRunName",
        "UpdateRunId",
        "Machines",
        *STATUS_COLUMNS.values(),
        "UpdatesInstalled",
        "UpdatesFailed",
        "StartTime",
        "EndTime",
    ],
    "run-machine-results": [
        "UpdateRunName",
        "Computer",
        "OSType",
        "Status",
        "Reason",
        "Installed",
        "FailedUpdates",
        "Pending",
        "Excluded",
        "RebootStatus",
        "ErrorCode",
        "StartTime",
        "EndTime",
        "UpdateRunId",
    ],
    "run-results-chart": ["Status", "Machines"],
    "failed-updates": [
        "UpdateRunName",
        "Computer",
        "UpdateTitle",
        "KBID",
        "PackageVersion",
        "Classification",
        "EndTime",
        "UpdateRunId",
    ],
    "rollbacks": [
        "TimeGenerated",
        "Computer",
        "UpdateRunName",
        "Status",
        "Health",
        "Rollback",
        "RestorePoint",
        "Reason",
        "UpdateRunId",
    ],
    "approval-queue": [
        "RequestedAt",
        "AssetCategory",
        "PatchKey",
        "UpdateTitle",
        "Classification",
        "OSType",
        "RequestedBy",
        "RequestId",
        "Justification",
    ],
    "release-states": [
        "AssetCategory",
        "Updates",
        "InTest",
        "Passed",
        "Failed",
        "Authorized",
        "Approved",
        "Deferred",
        "Rejected",
        "LastChange",
    ],
    "ring-runs": [
        "UpdateRunName",
        "UpdateRunId",
        "Release",
        "AssetCategory",
        "Ring",
        "Machines",
        "Installed",
        "Failed",
        "TestRing",
        "Approved",
        "NotRequired",
        "Unauthorized",
        "NotRecorded",
        "ApprovedUnder",
        "StartTime",
        "EndTime",
    ],
    "overdue-by-owner": [
        "Owner",
        "OwnerContact",
        "AssetCategory",
        "Machines",
        "MachinesOverdue",
        "UpdatesOverdue",
        "MaxOverdueDays",
        "InstalledUnauthorized",
        "AuthorizedMissing",
        "FailedInstalls",
        "IncompleteInstalls",
        "AuditDate",
    ],
    "machine-compliance": [
        "Computer",
        "AssetCategory",
        "Ring",
        "Owner",
        "MissingUpdates",
        "Overdue",
        "MaxOverdueDays",
        "InstalledUnauthorized",
        "AuthorizedMissing",
        "InstalledAuthorized",
        "FailedInstalls",
        "IncompleteInstalls",
        "LastAssessed",
        "AuditDate",
    ],
}


def test_every_workbook_query_returns_its_columns_and_rows(workbook, results):
    assert set(results) == set(EXPECTED_COLUMNS), "a query was added or renamed: give it expectations here"
    for name, table in results.items():
        assert list(table.columns) == EXPECTED_COLUMNS[name], name
        assert table.rows, f"{name} returned no rows on the demo data"


def test_overview_counts_the_fleet_as_the_api_does(results, machines):
    compliance = Counter(_state(m) if m["compliant"] is not None else "Not assessed" for m in machines)
    got = {r["Compliance"]: r["Machines"] for r in results["fleet-compliance"].as_dicts()}
    assert got == dict(compliance)
    shares = {r["Compliance"]: r["Share"] for r in results["fleet-compliance"].as_dicts()}
    # KQL's round() takes halves away from zero, Python's to even.
    assert shares == {k: math.floor(100 * v / len(machines) + 0.5) for k, v in compliance.items()}
    by_state = {r["State"]: r["Machines"] for r in results["machines-by-state"].as_dicts()}
    assert by_state == dict(Counter(_state(m) for m in machines))


def test_missing_updates_by_classification_match_the_inventory(results, missing):
    want: Counter[str] = Counter()
    for update in missing:
        want[update["classification"]] += update["machinesNeeding"]
    got = {r["Classification"]: r["Updates"] for r in results["missing-by-classification"].as_dicts()}
    assert got == dict(want)


def test_machines_view_has_every_machine_with_readiness_error_and_counts(results, machines, stack):
    rows = {r["Computer"]: r for r in results["machines-table"].as_dicts()}
    assert set(rows) == {m.computer_name for m in stack.fleet.machines}
    for machine in machines:
        row = rows[machine["computerName"]]
        assert row["Readiness"] == machine["readiness"], machine["computerName"]
        assert (row["LastError"] or None) == machine["lastError"], machine["computerName"]
        assert row["PatchMode"] == machine["patchMode"]
        if machine["compliant"] is None:
            assert row["Total"] is None and row["Compliance"] == "Not assessed"
        else:
            assert row["LastAssessed"] is not None and row["Total"] >= row["Critical"] + row["Security"]
            assert row["Compliance"] == _state(machine), machine["computerName"]
            # Unknown (CentOS: no classification data) misses nothing critical or security, as Compliant.
            nothing_urgent = row["Critical"] + row["Security"] == 0
            assert nothing_urgent == (machine["compliance"] != "NonCompliant"), machine["computerName"]


def test_missing_updates_list_the_machines_that_need_each(results, missing):
    got = {
        (r["OSType"], r["UpdateTitle"]): (r["Machines"], set(r["Computers"]))
        for r in results["missing-updates"].as_dicts()
    }
    want = {(u["osType"], u["title"]): (u["machinesNeeding"], u["computers"]) for u in missing}
    assert got == want
    assert len(results["missing-by-machine"].rows) == sum(u["machinesNeeding"] for u in missing)


def test_deployment_views_show_every_machine_of_the_run_with_its_result(results, update_run):
    """One row per machine of the run with the result the run recorded, including machines that have
    no update rows (nothing to install, skipped, not reachable, Arc servers). Machines the gate never
    started are shown once the claim activity sends their rows, so they are compared only if present."""
    statuses = update_run.statuses()
    stopped = update_run.gate_stopped()
    # The views show every run of the range: this one, and the safe-rollout demo's (checked in its own test).
    per_machine = [r for r in results["run-machine-results"].as_dicts()
                   if r["UpdateRunId"] == update_run.run_id]
    assert per_machine
    shown = {r["Computer"]: r["Status"] for r in per_machine}
    assert len(shown) == len(per_machine), "a machine has two rows"
    assert shown.items() <= statuses.items()
    assert {c: s for c, s in shown.items() if c not in stopped} == {
        c: s for c, s in statuses.items() if c not in stopped
    }
    with_update_rows = {c for c, o in update_run.outcomes.items() if any(
        p.state.value in ("Installed", "Failed", "Pending") for p in o.patches or ()
    )}  # fmt: skip
    assert set(shown) - with_update_rows, "every machine shown has update rows: the view shows nothing new"
    for row in per_machine:
        machine = update_run.machines[row["Computer"]]
        assert (row["Installed"], row["FailedUpdates"], row["Pending"]) == (
            machine["installed"], machine["failed"], machine["pending"]
        ), row["Computer"]
        assert (row["Reason"] or None) == machine["reason"] and (row["StartTime"] is None) == (
            machine["startedAt"] is None
        ), row["Computer"]

    [run] = [r for r in results["update-runs"].as_dicts() if r["UpdateRunId"] == update_run.run_id]
    assert run["UpdateRunName"] == update_run.name
    assert run["Machines"] == len(shown)
    by_status = Counter(shown.values())
    assert {column: run[column] for column in STATUS_COLUMNS.values()} == {
        column: by_status.get(status.value, 0) for status, column in STATUS_COLUMNS.items()
    }
    assert run["UpdatesInstalled"] == sum(update_run.machines[c]["installed"] for c in shown)
    assert run["UpdatesFailed"] == sum(o.failed for o in update_run.outcomes.values()) > 0
    # The chart counts every run's machines: this run's and the safe-rollout demo's (one rolled back, two
    # stopped by the health gate).
    chart = {r["Status"]: r["Machines"] for r in results["run-results-chart"].as_dicts()}
    by_status.update({"rolled back": 1, "skipped": 2})
    assert chart == dict(by_status)


def test_the_rollbacks_view_shows_the_rolled_back_machine_with_its_health_and_restore_point(results, rollout):
    rows = [r for r in results["rollbacks"].as_dicts() if r["UpdateRunId"] == rollout.run_id]
    assert rollout.rolled_back is not None
    assert [(r["Computer"], r["Status"], r["Rollback"]) for r in rows] == [
        (rollout.rolled_back.computer, "rolled back", "restored")]
    assert rows[0]["Health"].startswith("failed: app-probe") and rows[0]["RestorePoint"]


def test_failed_updates_view_lists_each_failed_update(results, update_run):
    failed = {(r["Computer"], r["UpdateTitle"]) for r in results["failed-updates"].as_dicts()}
    outcomes = update_run.outcomes
    assert failed == {(c, p.name) for c, o in outcomes.items() for p in o.patches or ()
                      if p.state.value == "Failed"}


def test_the_approval_queue_lists_the_waiting_request(results, governance):
    [row] = results["approval-queue"].as_dicts()
    assert {k: row[k] for k in governance.request} == governance.request


def test_releases_and_rings_show_each_categorys_states_and_what_authorized_each_runs_installs(
        results, governance, update_run):
    # The governance fixture: one update passed the web category's evidence and an operator requested it.
    [web] = [r for r in results["release-states"].as_dicts() if r["AssetCategory"] == "web"]
    assert (web["Updates"], web["Authorized"], web["Passed"], web["Approved"]) == (1, 1, 0, 0)
    # The demo fleet is uncategorised: every install of the run needed no approval, none was unauthorized.
    [run] = [r for r in results["ring-runs"].as_dicts() if r["UpdateRunId"] == update_run.run_id]
    patches = [p for o in update_run.outcomes.values() for p in o.patches or ()]
    # By classification, no release: its Release is empty (test_releases_flow shows a run of a release).
    assert (run["UpdateRunName"], run["Release"], run["AssetCategory"]) == (
        update_run.name, "", "uncategorised")
    assert run["Installed"] == sum(p.state.value == "Installed" for p in patches)
    assert run["Failed"] == sum(p.state.value == "Failed" for p in patches)
    assert (run["TestRing"], run["Approved"], run["Unauthorized"], run["ApprovedUnder"]) == (0, 0, 0, "")
    assert run["NotRequired"] >= run["Installed"] + run["Failed"] > 0


def test_the_audit_views_show_each_machines_daily_row_as_the_audit_api_answers(results, governance, machines):
    audited = {m["computer"]: m for m in governance.audit["machines"]}
    assert set(audited) == {m["computerName"] for m in machines}
    rows = {r["Computer"]: r for r in results["machine-compliance"].as_dicts()}
    assert {c: (r["MissingUpdates"], r["Overdue"], r["AssetCategory"]) for c, r in rows.items()} == {
        c: (m["missing"], m["counts"]["overdue"], m["category"]) for c, m in audited.items()}
    [owner] = results["overdue-by-owner"].as_dicts()  # the demo fleet is uncategorised: no owner
    assert (owner["AssetCategory"], owner["Machines"], owner["UpdatesOverdue"]) == (
        "uncategorised", len(machines), governance.audit["summary"]["findings"]["overdue"])


# --- alert rules -------------------------------------------------------------------------------------


def test_alert_rules_have_the_agreed_shape(alert_rules):
    names = [r["name"] for r in alert_rules]
    assert sorted(names) == sorted(set(names)) and len(names) == 6
    for rule in alert_rules:
        assert set(rule) == {
            "name",
            "displayName",
            "description",
            "severity",
            "query",
            "evaluationFrequency",
            "windowSize",
            "operator",
            "threshold",
            "timeAggregation",
            "runbookUrl",
        }, rule["name"]
        assert rule["severity"] in range(5) and rule["timeAggregation"] == "Count"
        assert rule["operator"] in {
            "GreaterThan",
            "GreaterThanOrEqual",
            "LessThan",
            "LessThanOrEqual",
            "Equal",
        }
        assert (
            _iso_duration(rule["evaluationFrequency"])
            <= _iso_duration(rule["windowSize"])
            <= timedelta(days=2)
        )
        assert rule["runbookUrl"].endswith("#troubleshooting") and len(rule["description"]) > 80


def _fires(rule: dict[str, Any], table: ResultTable) -> bool:
    assert rule["operator"] == "GreaterThan"
    return len(table.rows) > rule["threshold"]


def test_overdue_critical_and_security_updates_alert(stack, alert_rules, fired, missing):
    rule = next(r for r in alert_rules if r["name"] == "critical-security-updates-overdue")
    cutoff = stack.clock.now() - OVERDUE_AFTER
    want = {
        (computer, u["title"])
        for u in missing
        if u["classification"] in REQUIRED_CLASSIFICATIONS and _when(u["publishedDate"]) < cutoff
        for computer in u["computers"]
    }
    got = {(r["Computer"], r["UpdateTitle"]) for r in fired[rule["name"]].as_dicts()}
    assert want and got == want and _fires(rule, fired[rule["name"]])


def _when(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def test_machines_not_assessed_alert(stack, alert_rules, fired, machines):
    rule = next(r for r in alert_rules if r["name"] == "machines-not-assessed-24h")
    now = stack.clock.now()
    want = {
        m["computerName"]
        for m in machines
        if m["readiness"] != "Unsupported"
        and (m["lastAssessed"] is None or now - _when(m["lastAssessed"]) > MAX_ASSESSMENT_AGE)
    }
    rows = fired[rule["name"]].as_dicts()
    assert want and {r["Computer"] for r in rows} == want and _fires(rule, fired[rule["name"]])
    assert all(r["Readiness"] and r["LastError"] for r in rows)  # each says why


def test_failed_run_alert(alert_rules, fired, update_run):
    rule = next(r for r in alert_rules if r["name"] == "update-run-failed-machines")
    want = {(update_run.name, c) for c, status in update_run.statuses().items() if status in FAILED_RESULTS}
    rows = fired[rule["name"]].as_dicts()
    got = {(r["UpdateRunName"], r["Computer"]) for r in rows}
    assert want and got == want and _fires(rule, fired[rule["name"]])
    # Machines that report per update name the updates that failed.
    named = {r["Computer"]: set(_dynamic(r["Updates"]) or ()) for r in rows}
    failed_updates = {c: {p.name for p in o.patches or () if p.state.value == "Failed"}
                      for c, o in update_run.outcomes.items() if o.failed and o.patches is not None}
    assert failed_updates and {c: named[c] for c in failed_updates} == failed_updates


def _dynamic(value: Any) -> Any:
    """A dynamic column's value: the query API sends it as JSON text."""
    return json.loads(value) if isinstance(value, str) else value


def test_automatic_updates_alert(stack, alert_rules, fired):
    rule = next(r for r in alert_rules if r["name"] == "automatic-updates-on")
    automatic = {m.computer_name for m in stack.fleet.machines if m.patch_mode in AUTOMATIC_PATCH_MODES}
    production = {
        m.computer_name
        for m in stack.fleet.machines
        for name, value in m.tags.items()
        if name.lower() == PRODUCTION_TAG_NAME and value.lower() in PRODUCTION_TAG_VALUES
    }
    want = automatic & production
    rows = fired[rule["name"]].as_dicts()
    # The demo fleet has automatic machines on both sides of the tag, so the filter is seen to cut.
    assert want and automatic - production
    assert {r["Computer"] for r in rows} == want and _fires(rule, fired[rule["name"]])
    assert all(r["ProductionTag"].split("=", 1)[1].lower() in PRODUCTION_TAG_VALUES for r in rows)


# --- the queries name only declared columns: a rename in shared/logschema fails here -----------------


def test_governance_alerts_stay_quiet_on_the_uncategorised_demo_fleet(alert_rules, fired, governance):
    # Every demo machine is uncategorised: no install needs approval, and no update has been missing for
    # longer than a deadline (all were first seen by today's assessments). tests/integration/
    # test_audit_api.py fires both on a category's history.
    for name in ("unauthorized-installs", "compliance-deadline-breaches"):
        rule = next(r for r in alert_rules if r["name"] == name)
        assert not _fires(rule, fired[name]), fired[name].as_dicts()
    assert governance.audit["summary"]["findings"]["installed unauthorized"] == 0


def _all_queries(workbook, alert_rules, stack) -> dict[str, str]:
    class NoData:
        def run(self, kql: str, timespan: timedelta | None) -> ResultTable:
            return ResultTable(("SubscriptionId",), ("string",), ())

    now = stack.clock.now()
    values = resolve_parameters(workbook, {}, NoData(), now).values
    queries = {f"workbook {i.name}": substitute(i.query, values, now) for i in workbook.query_items()}
    queries.update({f"alert {r['name']}": r["query"] for r in alert_rules})
    return queries


class _EmptyTables:
    """The declared tables, empty, in one DuckDB database; a column can be renamed and back."""

    def __init__(self) -> None:
        self._con = duckdb.connect(":memory:")
        for table in TABLES:
            columns = ", ".join(f'"{c.name}" {DUCKDB_TYPES[c.type]}' for c in table.columns)
            self._con.execute(f'CREATE TABLE "{table.name}" ({columns})')

    def refuses(self, kql: str) -> bool:
        try:
            duckdb_kql.execute(self._con, kql, allow_write=False).fetchall()
        except (duckdb_kql.KqlError, duckdb.Error):
            return True
        return False

    def refuses_without(self, kql: str, table: LogTable, column: str) -> bool:
        self._rename(table, column, column + "Renamed")
        try:
            return self.refuses(kql)
        finally:
            self._rename(table, column + "Renamed", column)

    def _rename(self, table: LogTable, old: str, new: str) -> None:
        self._con.execute(f'ALTER TABLE "{table.name}" RENAME COLUMN "{old}" TO "{new}"')

    def close(self) -> None:
        self._con.close()


def test_renaming_any_column_a_query_uses_breaks_that_query(workbook, alert_rules, stack):
    """Every declared column a query names is read from a table it queries: renamed in that table's
    declaration (as a change in shared/log_tables.py would rename it), the query is refused. A column
    several tables declare (ComputerEnvironment, ...) must break the query in at least one of them."""
    tables = _EmptyTables()
    checked = 0
    try:
        for label, kql in _all_queries(workbook, alert_rules, stack).items():
            assert not tables.refuses(kql), f"{label} does not run on the declared schema"
            read = [t for t in TABLES if re.search(rf"\b{t.name}\b", kql)]
            assert read, f"{label} reads none of the declared tables"
            for column in sorted({c for t in read for c in t.column_names() if re.search(rf"\b{c}\b", kql)}):
                declaring = [t for t in read if column in t.column_names()]
                assert any(tables.refuses_without(kql, t, column) for t in declaring), (
                    f"{label} names {column} but still runs with it renamed in {[t.name for t in declaring]}"
                )
                checked += 1
    finally:
        tables.close()
    assert checked > 50


# --- the local page in headless Chromium -----------------------------------------------------------


class _RenderedViews(HTMLParser):
    """Per rendered query section: its state and how many rows, bars, slices or tiles it drew."""

    MARKS = ("wb-row", "wb-bar", "wb-slice", "wb-tile")

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, Any]] = {}
        self._current: str | None = None
        self._depth = 0
        self.rendered = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "main" and found.get("data-rendered") == "true":
            self.rendered = True
        if tag == "section" and found.get("data-item"):
            self._current = found["data-item"]
            self._depth = 0
            self.sections[self._current] = {
                "state": found.get("data-state"),
                "rows": int(found.get("data-rows") or 0),
                **dict.fromkeys(self.MARKS, 0),
            }
        if self._current is None:
            return
        if tag == "section":
            self._depth += 1
        for mark in set((found.get("class") or "").split()) & set(self.MARKS):
            self.sections[self._current][mark] += 1

    def handle_endtag(self, tag: str) -> None:
        if self._current is not None and tag == "section":
            self._depth -= 1
            if self._depth == 0:
                self._current = None


def _chromium(url: str, *extra: str, profile: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("Debian's chromium is not installed: `make setup` installs it (apt-get install chromium)")
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,3000",
        *extra,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_SECONDS, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def page(stack, update_run, governance):
    with workbook_server_for(stack) as server:
        yield server


@pytest.mark.parametrize("tab", TABS)
def test_the_local_page_renders_each_view_with_data_in_chromium(page, tab, workbook, tmp_path):
    url = f"{page.url}?selectedTab={tab}"
    document = page.document(f"selectedTab={tab}")
    expected = {}

    def collect(items: list[dict[str, Any]]) -> None:
        for item in items:
            if item["kind"] == "group":
                collect(item["items"])
            elif item["kind"] == "query":
                expected[item["name"]] = item

    collect(document["items"])
    group = next(i for i in workbook.items if getattr(i, "name", None) == tab)
    assert set(expected) == {i.name for i in group.items if isinstance(i, QueryItem)}

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"workbook-{tab}.png"
    screenshot.unlink(missing_ok=True)
    dom = _chromium(url, "--dump-dom", f"--screenshot={screenshot}", profile=tmp_path / "profile").stdout
    views = _RenderedViews()
    views.feed(dom)
    assert views.rendered, "the page's script did not run"
    assert set(views.sections) == set(expected)
    marks = {"table": "wb-row", "barchart": "wb-bar", "piechart": "wb-slice", "tiles": "wb-tile"}
    for name, item in expected.items():
        section = views.sections[name]
        assert section["state"] == "ok" and item["error"] is None, (name, item["error"])
        assert section["rows"] == len(item["rows"]) > 0, name
        assert section[marks[item["visualization"]]] == len(item["rows"]), (name, section)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
