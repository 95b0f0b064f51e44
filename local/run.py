"""``make run``: the product's main job, through the real functions, on the demo fleet."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from local.arm.fleet import load_fleet
from local.clock import CLOCK_FILE, DEFAULT_SPEED, VirtualClock, save_clock, saved_clock
from local.governance_demo import (
    TEST_RING_GROUPS,
    UNAUTHORIZED_ALERT,
    Api,
    GovernanceDemo,
    retire_earlier_demos,
    run_governance_demo,
)
from local.report import table
from local.rollout_demo import MACHINES as ROLLOUT_MACHINES
from local.rollout_demo import PROBE, RolloutDemo, retire_earlier_rollout_demos, run_rollout_demo
from local.stack import DEFAULT_STATE_DIR, DEMO_FLEET, SIGN_IN_NOTICE, LocalStack
from local.workbook import serve_workbook
from shared.governance.audit import ComplianceRunInput

_WAIT_SECONDS = 300
# Two of the seed's searches, through the workspace functions: what the latest assessment of each machine
# says is needed (Arc servers' lists come from Resource Graph), and the updates that failed in a run.
NEEDED_BY_CLASSIFICATION = (
    "Update | summarize arg_max(TimeGenerated, *) by SourceComputerId, UpdateID "
    '| where UpdateState == "Needed" and Optional == false '
    '| summarize Updates = count(), OnArcServers = countif(ComputerEnvironment == "Non-Azure") '
    "by Classification "
    "| order by Updates desc"
)
FAILED_UPDATES = (
    'UpdateRunProgress | where InstallationStatus == "failed" '
    "| summarize AggregatedValue = count() by Computer, Title, UpdateRunName"
)
_POLL_SECONDS = 0.1
# The demo deployment: Linux critical and security updates, leaving the RHEL release package alone
# (the seed's "unexpected OS-level upgrades"), half the machines at once, stop after three failures.
DEMO_DEPLOYMENT: dict[str, Any] = {
    "name": "linux-critical-demo",
    "operatingSystem": "Linux",
    "targets": {"groups": [{"filter": {}}], "evaluateGroupsAt": "run"},
    "classifications": ["Critical and security updates"],
    "packagesToExclude": ["redhat-release-server*"],
    "schedule": {"startTime": "2027-01-12T02:00:00", "timeZone": "Europe/Berlin",
                 "recurrence": {"frequency": "Month", "interval": 1,
                                "monthlyOccurrence": {"day": "Tuesday", "occurrence": 2, "offsetDays": 3}}},
    "maintenanceWindowMinutes": 180,
    "rebootSetting": "IfRequired",
    "rollout": {"maxConcurrent": "50%", "errorBudget": 3},
}


def _say(text: str = "") -> None:
    print(text, flush=True)


# What a state folder holds that ``--fresh`` drops: storage (inventory, deployments, runs, the task hub),
# the Log Analytics rows, and the clock.
_STATE = ("azurite", "loganalytics.duckdb", "loganalytics.duckdb.wal", CLOCK_FILE)


def run(fleet_file: Path = DEMO_FLEET, state_dir: Path = DEFAULT_STATE_DIR, *, fresh: bool = False) -> int:
    fleet = load_fleet(fleet_file)
    if fresh:
        for stale in _STATE:
            path = state_dir / stale
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    saved = saved_clock(state_dir)
    # One clock: go on from where the last command on this folder stopped (`serve` goes on from here).
    clock = VirtualClock(saved.now) if saved else VirtualClock()
    started = time.monotonic()
    if saved:
        _say(f"Adding the demo data to the state in {state_dir}: what is there stays (deployments and "
             f"runs included); the clock goes on from {saved.now:%Y-%m-%d %H:%M} UTC. "
             "`python -m local run --fresh` starts from nothing.")
    elif (state_dir / "azurite").exists():  # made before the folder kept its clock
        _say(f"Adding the demo data to the state in {state_dir}, which kept no clock: its older times may "
             "not line up with this run's; `python -m local run --fresh` starts from nothing.")
    else:
        _say(f"Starting from nothing in {state_dir}; the clock starts at {clock.now():%Y-%m-%d %H:%M} UTC.")
    _say(f"Starting the local host with {len(fleet.machines)} machines from {fleet_file.name} ...")
    try:
        return _run(fleet, fleet_file, state_dir, clock, started)
    finally:
        save_clock(state_dir, clock.now(), saved.speed if saved else DEFAULT_SPEED)


def _run(fleet: Any, fleet_file: Path, state_dir: Path, clock: VirtualClock, started: float) -> int:
    with LocalStack(fleet, clock=clock, state_dir=state_dir).start(serve_http=True) as stack:
        assert stack.functions and stack.durable and stack.logs and stack.arm and stack.azurite
        assert stack.graph and stack.events and stack.webhook
        _say(f"  Azurite          tables on 127.0.0.1:{stack.azurite.table_port}")
        _say(f"  ARM stand-in     {stack.arm.base_url}")
        _say(f"  Resource Graph   {stack.graph.base_url}")
        _say(f"  Log Analytics    {stack.logs.base_url}")
        _say(f"  Event Grid topic {stack.events.endpoint} (notifications; webhook {stack.webhook.url})")
        _say(f"  API              {stack.api_base_url}/api")
        _say(f"  Sign-in          {SIGN_IN_NOTICE}")
        workbook = serve_workbook(stack)
        _say(f"  Workbook         {workbook}  (while this runs; `python -m local serve` keeps it up)")
        _say("")
        _say("1. Fleet discovery (timer discover_fleet -> orchestration fleet_discovery_run)")
        stack.functions.fire_timer("discover_fleet")
        discovery = _latest_instance(stack, "discovery-")
        result = _follow(stack, discovery)
        _say("")
        _print_machines(stack)
        _print_log_analytics(stack)
        _say("")
        _say("2. Assessment (timers assess_linux_fleet and assess_windows_fleet -> orchestration "
             "assessment_run -> batches -> one assess_machine per machine)")
        assessments = {}
        for os_name in ("linux", "windows"):
            stack.functions.fire_timer(f"assess_{os_name}_fleet")
            assessments[os_name] = _follow(stack, _latest_instance(stack, f"assessment-{os_name}-"))
        _say("")
        _print_compliance(stack)
        _print_search(stack, NEEDED_BY_CLASSIFICATION, ["Classification", "Updates", "OnArcServers"])
        _say("")
        _say("3. Update deployment (POST /api/deployments, then POST /api/deployments/{name}/runs -> "
             "orchestration deployment_run -> batches -> one deploy_machine per machine)")
        # else step 3 would break their approval rule, and run their health checks
        retired = retire_earlier_demos(Api(stack.api_base_url or ""))
        retired += retire_earlier_rollout_demos(Api(stack.api_base_url or ""))
        if retired:
            _say(f"   (deleted the governed-patching demo's category of an earlier run: "
                 f"{', '.join(retired)})")
        deployment = _run_deployment(stack)
        _say("")
        _print_deployment(stack, deployment["runId"])
        _print_search(stack, FAILED_UPDATES, ["Computer", "Title", "UpdateRunName", "AggregatedValue"])
        _say("")
        _say("4. Governed patching (asset category, test ring, evidence, approval by a second person, "
             "production of exactly the tested versions, audit)")
        _print_governance(run_governance_demo(stack))
        _say("")
        _say("5. Compliance audit of the day so far (the timer audit_daily_compliance writes each machine's "
             "PatchCompliance_CL row for the day before; this is the same run, as of now)")
        _print_daily_compliance(stack, clock)
        _say("")
        _say("6. Safe rollout (health checks around each install, a snapshot before it, and an automatic "
             "rollback when a check fails)")
        _print_rollout(run_rollout_demo(stack))
        _say("")
        _say(f"Done in {time.monotonic() - started:.1f}s; discovery result: {json.dumps(result)}")
        for os_name, summary in assessments.items():
            counts = {k: summary[k] for k in ("machines", "assessed", "failed", "timed_out", "not_assessable",
                                              "unsupported", "compliant", "non_compliant",
                                              "compliance_unknown")}
            _say(f"  {os_name} assessment: {json.dumps(counts)}")
    _say("")
    _say(f"State kept in {state_dir} (clock stopped at {clock.now():%Y-%m-%d %H:%M} UTC). Next:")
    _say("  .venv/bin/python -m local query \\")
    _say("    'UpdateRunProgress | where InstallationStatus == \"failed\" "
         "| summarize count() by Computer, Title, UpdateRunName'")
    _say("  .venv/bin/python -m local query \\")
    _say("    'Update | where UpdateState == \"Needed\" and Optional == false "
         "| summarize count() by Classification'")
    _say("  .venv/bin/python -m local serve    # the whole host, live from this clock, timers firing")
    return 0


def _print_rollout(demo: RolloutDemo | None) -> None:
    if demo is None:
        _say(f"   skipped: this fleet lacks the demo fleet's VMs {', '.join(ROLLOUT_MACHINES)}")
        return
    _say(f"   category {demo.category}: agent ready and the {PROBE} probe (Run Command) before and after "
         "each install, an OS disk snapshot before it, rollback on a failed check")
    _say(f"   run {demo.run_id} on its test ring, one machine at a time, error budget 1:")
    rolled = demo.rolled_back
    for machine in demo.machines:
        if rolled is not None and machine.computer == rolled.computer:
            installed = f"{rolled.installed_at:%H:%M}" if rolled.installed_at else "?"
            back = f"{rolled.rolled_back_at:%H:%M}" if rolled.rolled_back_at else "?"
            updates = ", ".join(rolled.updates) or "its updates"
            _say(f"   - {machine.computer}: installed {updates} at {installed}; health {machine.health}")
            _say(f"     rolled back at {back} from its OS disk snapshot: packages as before "
                 f"{'yes' if rolled.packages_restored else 'NO'}, application healthy "
                 f"{'yes' if rolled.healthy_again else 'NO'}")
            states = ", ".join(f"{key} is {state}" for key, state in rolled.update_states.items())
            _say(f"     for {demo.category}: {states or 'no update state'}; notification Machine.RolledBack "
                 f"{'published' if rolled.notified else 'NOT seen'}")
        else:
            why = f" ({machine.reason})" if machine.reason else ""
            _say(f"   - {machine.computer}: {machine.status}{why}")
    _say(f"   the ring stopped: {demo.stop_reason or 'no stop'}; see GET /api/machines/{{id}}/changes and "
         "the workbook's Rollbacks view")


def _print_governance(demo: GovernanceDemo | None) -> None:
    if demo is None:
        _say("   skipped: this fleet has no running Ubuntu 20.04 servers in and outside "
             f"{' and '.join(TEST_RING_GROUPS)} (the demo fleet has)")
        return
    rings: dict[str, list[str]] = {}
    for computer, ring in sorted(demo.machines.items()):
        rings.setdefault(ring, []).append(computer)
    _say(f"   category {demo.category} (POST /api/categories): {len(demo.machines)} Ubuntu 20.04 servers; "
         + "; ".join(f"ring {ring}: {', '.join(names)}" for ring, names in rings.items()))
    test = demo.test_run
    _say(f"   release {demo.candidate.name}: the {len(demo.candidate.items)} versions the category was "
         f"missing; test-ring run {test.run_id}: {test.state}")
    by_state: dict[str, list[Any]] = {}
    for evidence in demo.evidence:
        by_state.setdefault(evidence.state, []).append(evidence)
    for state, found in by_state.items():
        if state == "failed":
            for e in found:
                _say(f"     failed  {e.key}: {e.reason}")
        elif state == "new":
            _say(f"     not tested (no test-ring machine needed it): {', '.join(e.key for e in found)}")
        else:
            _say(f"     {state}  {', '.join(e.key for e in found)}")
    approval = demo.approval
    _say(f"   release {demo.baseline.name}: the {len(demo.baseline.items)} versions that passed; approval "
         f"{approval.request_id} requested by {approval.requested_by}")
    _say(f"     {approval.requested_by} approving her own request: {approval.self_approval_status} "
         f"{approval.self_approval_code}; {approval.approved_by} {approval.state} it: "
         f"\"{approval.justification}\"")
    published = demo.published
    _say(f"   the distribution publishes {published.package} {published.new_version} (tested: "
         f"{published.tested_version}); {len(published.machines)} machines are offered it")
    production = demo.production_run
    _say(f"   production run {production.run_id}: {production.state}; installed "
         f"{', '.join(production.installed)}")
    for held in production.held:
        holding = [m.computer for m in production.machines if held in m.held]
        _say(f"     held on {', '.join(holding)}: {held} (held: version not tested)")
    audit = demo.audit
    failed = [f"{r.update} on {r.computer}" for r in audit.rows if r.finding == "failed install"]
    verdict = "clean" if audit.clean else "NOT clean"
    _say(f"   audit of {audit.day} (GET /api/audit?category={demo.category}): {verdict}: "
         f"{audit.count('installed authorized')} installs authorized, "
         f"{audit.count('installed unauthorized')} unauthorized, "
         f"{audit.count('authorized missing')} approved but missing, {audit.count('overdue')} overdue"
         + (f"; the test ring's failed install: {', '.join(failed)}" if failed else ""))
    wrong = demo.unauthorized
    shown = [r.finding for r in wrong.audit.rows if r.update == wrong.update]
    rows = [r for r in wrong.run_rows if r.get("Authorized") is False]
    _say(f"   unapproved install: hotfix {wrong.deployment} installed {wrong.update} on {wrong.computer}, "
         f"which left the {wrong.moved_from} ring while it ran: audit {', '.join(shown) or 'nothing'}; "
         f"UpdateRunProgress_CL rows with Authorized == false: {len(rows)}; alert {UNAUTHORIZED_ALERT}: "
         f"{len(wrong.alert_rows)} row(s)")
    if demo.notifications:
        _say("   notifications on the Event Grid topic: "
             + ", ".join(f"{kind} {count}" for kind, count in sorted(demo.notifications.items())))


def _print_daily_compliance(stack: LocalStack, clock: VirtualClock) -> None:
    assert stack.durable
    now = clock.now()
    run = ComplianceRunInput(day=now.date(), generated_at=now)
    instance_id = f"compliance-{now:%Y-%m-%dT%H%M%S}-so-far"  # the timer's own id names the day alone
    stack.durable.start_new("daily_compliance_run", instance_id, run.model_dump(mode="json"))
    summary = _follow(stack, instance_id, show=lambda progress: "auditing")
    _say(f"   {summary['machines']} machines audited for {summary['day']}: {summary['overdueMachines']} with "
         f"an overdue update, {summary['unauthorizedMachines']} with an unauthorized install; "
         f"{summary['queued']} PatchCompliance_CL rows (the workbook's Governance tab)")


def _api(stack: LocalStack, method: str, path: str, body: Any = None) -> Any:
    """Call the app's HTTP API over real HTTP, as an administrator's script would."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{stack.api_base_url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{method} {path} answered {error.code}: {error.read().decode()}") from None


def _run_deployment(stack: LocalStack) -> dict[str, Any]:
    name = DEMO_DEPLOYMENT["name"]
    existing = [d for d in _api(stack, "GET", "/api/deployments")["deployments"] if d["name"] == name]
    created = existing[0] if existing else _api(stack, "POST", "/api/deployments", DEMO_DEPLOYMENT)
    made = "is already in the state (an earlier run made it)" if existing else "created"
    _say(f"   deployment {created['name']} {made}: {created['operatingSystem']}, "
         f"{', '.join(created['classifications'])}, excluding {', '.join(created['packagesToExclude'])}, "
         f"window {created['maintenanceWindowMinutes']} min, at most {created['rollout']['maxConcurrent']} "
         f"at once, error budget {created['rollout']['errorBudget']}")
    started = _api(stack, "POST", f"/api/deployments/{name}/runs")
    _say(f"   started run {started['runId']} (follow it at {started['status']})")
    _follow(stack, started["runId"], show=_deployment_progress)
    return dict(started)


def _deployment_progress(progress: dict[str, Any]) -> str:
    if progress.get("stage") == "running":  # the batches' counts; live ones: GET /api/deployment-runs/{runId}
        settled = ", ".join(f"{k} {v}" for k, v in (progress.get("batchResults") or {}).items() if v)
        return (f"running: {progress['batchesDone']}/{progress['batches']} batches of {progress['machines']} "
                f"machines done; {settled or 'no batch done yet'}")
    if progress.get("stage") != "done":
        return json.dumps(progress)
    results = ", ".join(f"{k} {v}" for k, v in (progress.get("results") or {}).items() if v)
    return (f"{progress['stage']}: {progress['started']}/{progress['machines']} started, "
            f"{progress['running']} running, {progress['queued']} waiting; {results or 'no results yet'}")


def _print_deployment(stack: LocalStack, run_id: str) -> None:
    run = _api(stack, "GET", f"/api/deployment-runs/{run_id}")
    rows = [
        {
            "machine": m["computer"],
            "result": m["status"],
            "installed": m["installed"],
            "failed": m["failed"],
            "pending": m["pending"],
            "excluded": m["excluded"],
            "reboot": m["rebootStatus"] or "",
            "took": m.get("durationText") or "",
            "why / error": m["reason"] or m["errorCode"] or "",
        }
        for m in run["machines"]
    ]
    _say(f"Deployment run {run_id} (GET /api/deployment-runs/{{runId}}): {run['state']}, window "
         f"{run['windowStart']} to {run['windowEnd']}")
    _say(table(rows, ["machine", "result", "installed", "failed", "pending", "excluded", "reboot", "took",
                      "why / error"]))
    _say("Each machine's operation output: "
         "GET /api/deployment-runs/{runId}/machines/{machine}/outputs/{step}")


def _latest_instance(stack: LocalStack, prefix: str) -> str:
    assert stack.durable
    instances = [i for i in stack.durable.list_instances() if i["instanceId"].startswith(prefix)]
    if not instances:
        raise RuntimeError(f"the timer started no orchestration with an id starting {prefix!r}")
    return str(max(instances, key=lambda i: i["createdTime"])["instanceId"])


def _follow(stack: LocalStack, instance_id: str, show: Any = json.dumps) -> Any:
    """Print the orchestration's custom status each time it changes, until it ends."""
    assert stack.durable
    deadline = time.monotonic() + _WAIT_SECONDS
    last = None
    while time.monotonic() < deadline:
        status = stack.durable.get_status(instance_id) or {}
        progress = status.get("customStatus")
        if progress != last and progress is not None:
            _say(f"   {instance_id}: {show(progress)}")
            last = progress
        if status.get("runtimeStatus") in ("Completed", "Failed", "Terminated"):
            if status["runtimeStatus"] != "Completed":
                raise RuntimeError(f"{instance_id} ended {status['runtimeStatus']}: {status.get('output')}")
            return status.get("output")
        time.sleep(_POLL_SECONDS)
    raise TimeoutError(f"{instance_id} did not finish within {_WAIT_SECONDS}s")


def _print_machines(stack: LocalStack) -> None:
    assert stack.functions
    response = stack.functions.request("GET", "/api/machines")
    machines = json.loads(response.get_body())["machines"]
    rows = [
        {
            "machine": m["computerName"],
            "os": f"{m['osName']} {m['osVersion']}".strip(),
            "where": m["environment"],
            "power": m["powerState"],
            "patch mode": m["patchMode"],
            "note": m["notReachableReason"] or m["supportReason"] or "",
        }
        for m in machines
    ]
    _say(f"Machines in the inventory (GET /api/machines): {len(rows)}")
    _say(table(rows, ["machine", "os", "where", "power", "patch mode", "note"]))


def _print_compliance(stack: LocalStack) -> None:
    """Readiness and compliance from the API; missing-update counts from the UpdateSummary_CL rows."""
    assert stack.functions and stack.logs
    machines = json.loads(stack.functions.request("GET", "/api/machines").get_body())["machines"]
    summaries = {
        str(r["ResourceId"]).lower(): r
        for r in stack.logs.query("UpdateSummary_CL | summarize arg_max(TimeGenerated, *) by ResourceId")
    }
    rows = []
    for m in sorted(machines, key=lambda m: (m["osType"], m["computerName"])):
        counts = summaries.get(m["resourceId"].lower(), {})
        rows.append({
            "machine": m["computerName"],
            "os": m["osType"],
            "compliant": {"Compliant": "yes", "NonCompliant": "NO", "Unknown": "unknown"}.get(
                m["compliance"], "-"),
            "critical": counts.get("CriticalUpdatesMissing", "-"),
            "security": counts.get("SecurityUpdatesMissing", "-"),
            "other": counts.get("OtherUpdatesMissing", "-"),
            "reboot": {True: "pending", False: ""}.get(m["rebootPending"], ""),
            "readiness / last error": m["readiness"] + (f": {m['lastError']}" if m["lastError"] else ""),
        })
    _say(f"Compliance (GET /api/machines + UpdateSummary_CL): {len(rows)} machines")
    columns = ["machine", "os", "compliant", "critical", "security", "other", "reboot",
               "readiness / last error"]
    _say(table(rows, columns))


def _print_search(stack: LocalStack, kql: str, columns: list[str]) -> None:
    assert stack.logs
    _say("")
    _say(f"Log Analytics: {kql}")
    _say(table(stack.logs.query(kql), columns))


def _print_log_analytics(stack: LocalStack) -> None:
    assert stack.logs
    kql = (
        "Heartbeat_CL | summarize arg_max(TimeGenerated, *) by SourceComputerId "
        "| summarize Machines = count() by OSType, ComputerEnvironment | order by OSType asc"
    )
    _say("")
    _say(f"Log Analytics: {kql}")
    _say(table(stack.logs.query(kql), ["OSType", "ComputerEnvironment", "Machines"]))
