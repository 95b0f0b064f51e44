"""Issue 14's "Done when", through the local host (ARM stand-in, Azurite, the Durable runner on a virtual
clock), on a small fleet of Ubuntu 22.04 VMs in one category with a safety policy:

- a test-ring run in which ``tzdata`` breaks one machine's application: its probe fails after the install,
  it is restored from its snapshot (packages and health as before), the error budget of one stops the ring
  and the others are ``skipped: health gate``; the update is ``failed`` for the category, a
  ``Machine.RolledBack`` notification is published, the change history shows the install and the rollback
  with their times;
- a machine unhealthy before its install is skipped and untouched;
- a ``verdict`` check passes on a posted verdict and fails on its timeout;
- a manual rollback over HTTP works within the retention and is refused after it;
- the cleanup timer deletes expired snapshots, and the replaced disks only once their own retention ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest

from local.arm.catalogue import lookup
from local.arm.fleet import parse_fleet
from local.arm.health import update_label
from local.stack import LocalStack
from shared.azure.credentials import credential_for
from shared.azure.disks import DiskOperations
from shared.model.machines import machine_key
from shared.safety.restore_points import PointState, restore_points
from shared.settings import load_settings
from tests.integration.governance_setup import RUN_TIMEOUT, body, governed_stack, ringed_category

SUB = "66666666-6666-4666-8666-666666666666"
GROUP = "rg-safe"
CATEGORY = "safe-web"
TZDATA = lookup("ubuntu-22.04", "tzdata")
assert TZDATA is not None
BREAKING = f"tzdata={TZDATA.version}"
RETENTION_DAYS = 2
POLICY = {
    "checks": [{"name": "agent", "type": "agentReady", "withinMinutes": 10},
               {"name": "app-probe", "type": "command", "script": ["systemctl is-active --quiet app"]}],
    "bakeMinutes": 30, "recheckMinutes": 10, "snapshot": "os", "snapshotRetentionDays": RETENTION_DAYS,
}  # fmt: skip


def _vm(name: str, updates: list[str], tags: dict[str, str], **behaviours: Any) -> dict[str, Any]:
    return {"subscription": SUB, "resourceGroup": GROUP, "name": name, "kind": "azure-vm", "osType": "Linux",
            "osName": "ubuntu", "osVersion": "22.04", "location": "westeurope", "availableUpdates": updates,
            "tags": tags, "behaviours": behaviours}  # fmt: skip


FLEET = parse_fleet({"subscriptions": [{"id": SUB}], "machines": [
    _vm("safe-01", ["openssl", "tzdata"], {"ring": "test"}, breaksHealth=["tzdata"]),
    _vm("safe-02", ["openssl", "tzdata"], {"ring": "test"}),
    _vm("safe-03", ["openssl", "tzdata"], {"ring": "test"}),
    _vm("sick-01", ["openssl"], {}, unhealthy=True),
    _vm("prod-01", ["openssl"], {}),
    _vm("prod-02", ["openssl"], {}),
    _vm("prod-03", ["openssl"], {}),
    {**_vm("arc-01", ["openssl"], {}), "kind": "arc-server", "location": "westeurope"},
    {**_vm("data-01", ["openssl", "tzdata"], {}, breaksHealth=["tzdata"]), "dataDisks": [{"lun": 0}]},
    _vm("log-01", ["openssl"], {}),
    _vm("log-02", ["openssl"], {}),
]})  # fmt: skip


def rid(name: str) -> str:
    provider = ("Microsoft.HybridCompute/machines" if name.startswith("arc-")
                else "Microsoft.Compute/virtualMachines")
    return f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/{provider}/{name}"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    category = ringed_category(CATEGORY, "safe rollouts", SUB, requiresApproval=False, safety=POLICY)
    with governed_stack(FLEET, category) as running:
        yield running


def installed(stack: LocalStack, name: str) -> list[str]:
    assert stack.arm is not None
    return sorted(update_label(u) for u in stack.arm.simulation.machine(rid(name)).installed)


def healthy(stack: LocalStack, name: str) -> bool:
    assert stack.arm is not None
    return stack.arm.simulation.machine(rid(name)).health_failure() is None


def deploy(stack: LocalStack, name: str, targets: dict[str, Any], **fields: Any) -> str:
    spec = {"name": name, "operatingSystem": "Linux", "targets": targets,
            "classifications": ["Critical", "Security", "Other"],
            "schedule": {"startTime": "2099-01-01T02:00:00", "timeZone": "UTC"},
            "maintenanceWindowMinutes": 240, "rebootSetting": "Never"} | fields  # fmt: skip
    assert stack.functions is not None
    created = stack.functions.request("POST", "/api/deployments", body=spec)
    assert created.status_code == 201, created.get_body()
    started = stack.functions.request("POST", f"/api/deployments/{name}/runs")
    assert started.status_code == 202, started.get_body()
    return str(body(started)["runId"])


def finished(stack: LocalStack, run_id: str) -> dict[str, Any]:
    assert stack.durable is not None and stack.functions is not None
    final = stack.durable.wait_for_completion(run_id, timeout=RUN_TIMEOUT)
    assert final["runtimeStatus"] == "Completed", final
    return body(stack.functions.request("GET", f"/api/deployment-runs/{run_id}"))


def _resource(stack: LocalStack, resource_id: str) -> Any:
    """A disk or snapshot as the ARM stand-in holds it (None: deleted), once the deletes sent have had
    their time (ARM deletes asynchronously: the stand-in's DELETE_DURATION)."""
    assert stack.arm is not None
    with stack.arm.simulation.lock:
        stack.arm.simulation.settle()
        return stack.arm.simulation.resources.get(resource_id.lower())


def by_computer(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["computer"]: m for m in run["machines"]}


@pytest.fixture(scope="module")
def test_ring_run(stack: LocalStack) -> dict[str, Any]:
    before = {name: installed(stack, name) for name in ("safe-01", "safe-02", "safe-03")}
    events_before = len(stack.events.events) if stack.events else 0
    run_id = deploy(stack, "safe-test-ring", {"categories": [{"category": CATEGORY, "ring": "test"}]},
                    rollout={"maxConcurrent": 1, "errorBudget": 1})
    run = finished(stack, run_id)
    events = stack.events.events[events_before:] if stack.events else []
    return {"run": run, "before": before, "events": events}


def test_a_broken_machine_is_rolled_back_and_the_health_gate_stops_the_ring(stack, test_ring_run):
    run = test_ring_run["run"]
    machines = by_computer(run)
    broken = machines["safe-01"]
    assert broken["status"] == "rolled back", (broken["reason"], broken)
    assert "app-probe" in broken["reason"] and "restored from the snapshots" in broken["reason"]
    assert broken["health"].startswith("failed: app-probe") and "tzdata" in broken["health"]
    assert broken["rollback"] == "restored" and broken["restorePoint"]
    for name in ("safe-02", "safe-03"):
        assert (machines[name]["status"], machines[name]["reason"]) == ("skipped", "health gate")
    assert run["stopReason"] == "health gate"
    assert run["results"]["rolled back"] == 1


def test_the_restored_machine_has_the_packages_and_health_it_had_before_the_install(stack, test_ring_run):
    assert installed(stack, "safe-01") == test_ring_run["before"]["safe-01"]
    assert healthy(stack, "safe-01")
    # The machines the gate stopped were never touched.
    for name in ("safe-02", "safe-03"):
        assert installed(stack, name) == test_ring_run["before"][name]


def test_the_breaking_update_is_failed_for_the_category(stack, test_ring_run):
    shown = body(stack.functions.request("GET", f"/api/patches/Linux/{quote(BREAKING, safe='')}"))
    state = next(c for c in shown["categories"] if c["category"] == CATEGORY)
    assert state["state"] == "failed", state
    assert "rolled back on safe-01" in (state["justification"] or "") or state["state"] == "failed"


def test_a_notification_says_which_machine_was_rolled_back_and_why(stack, test_ring_run):
    rolled = [e for e in test_ring_run["events"] if e["type"] == "PatchManagement.Machine.RolledBack"]
    assert len(rolled) == 1, [e["type"] for e in test_ring_run["events"]]
    data = rolled[0]["data"]
    assert data["computer"] == "safe-01" and data["trigger"] == "health" and data["category"] == CATEGORY
    assert {"osType": "Linux", "key": BREAKING} in data["patches"]


def test_the_change_history_shows_the_install_and_then_the_rollback_with_their_times(stack, test_ring_run):
    changes = body(stack.functions.request("GET", f"/api/machines/{quote(rid('safe-01'), safe='')}/changes"))
    rows = [c for c in changes["changes"] if c["key"] == BREAKING]
    statuses = {c["status"]: c["at"] for c in rows}
    assert set(statuses) == {"succeeded", "rolled back"}, rows
    assert statuses["succeeded"] < statuses["rolled back"]
    assert "app-probe" in next(c["reason"] for c in rows if c["status"] == "rolled back")


@pytest.fixture(scope="module")
def production_run(stack: LocalStack, test_ring_run) -> dict[str, Any]:
    before = {name: installed(stack, name) for name in ("prod-01", "sick-01")}
    run_id = deploy(stack, "safe-prod", {"machines": [rid("prod-01"), rid("sick-01")]},
                    rollout={"maxConcurrent": 2, "errorBudget": 1})
    return {"run": finished(stack, run_id), "run_id": run_id, "before": before}


def test_a_machine_unhealthy_before_its_install_is_skipped_and_untouched(stack, production_run):
    sick = by_computer(production_run["run"])["sick-01"]
    assert sick["status"] == "skipped" and sick["reason"].startswith("unhealthy before install: app-probe")
    assert sick["health"] == "unhealthy before install"
    assert installed(stack, "sick-01") == production_run["before"]["sick-01"]
    points = restore_points(load_settings())
    assert points.get(machine_key(rid("sick-01")), production_run["run_id"]) is None  # no snapshot either


def test_a_healthy_machine_passes_its_checks_after_the_install(stack, production_run):
    prod = by_computer(production_run["run"])["prod-01"]
    assert (prod["status"], prod["health"], prod["rollback"]) == ("succeeded", "passed", None)
    point = restore_points(load_settings()).get(machine_key(rid("prod-01")), production_run["run_id"])
    assert point is not None and point.state is PointState.TAKEN


def _verdict_policy() -> dict[str, Any]:
    return {"checks": [{"name": "smoke-tests", "type": "verdict", "timeoutMinutes": 30}]}


def test_a_verdict_check_passes_on_a_posted_verdict(stack, production_run):
    run_id = deploy(stack, "safe-verdict", {"machines": [rid("prod-02")]}, safety=_verdict_policy())
    path = f"/api/deployment-runs/{run_id}/machines/prod-02/verdict"
    deadline = time.monotonic() + 60
    while True:  # posted as soon as the machine's deployment runs; it waits for it after the install
        answer = stack.functions.request("POST", path, body={"result": "pass", "reason": "smoke tests green"})
        if answer.status_code == 202 or time.monotonic() > deadline:
            break
        # 404 until the run has resolved its machines, 409 until the machine's deployment runs
        assert answer.status_code in (404, 409), answer.get_body()
        time.sleep(0.005)
    assert answer.status_code == 202, answer.get_body()
    machine = by_computer(finished(stack, run_id))["prod-02"]
    assert (machine["status"], machine["health"]) == ("succeeded", "passed"), machine


def test_a_verdict_check_fails_when_no_verdict_comes_in_time(stack, production_run):
    run_id = deploy(stack, "safe-no-verdict", {"machines": [rid("prod-03")]}, safety=_verdict_policy())
    machine = by_computer(finished(stack, run_id))["prod-03"]
    assert machine["status"] == "failed", machine
    assert "no verdict was posted within 30 minutes" in machine["reason"]
    late = stack.functions.request("POST", f"/api/deployment-runs/{run_id}/machines/prod-03/verdict",
                                   body={"result": "pass"})
    assert late.status_code == 409 and body(late)["error"]["code"] == "NotWaitingForVerdict"


def test_bad_verdicts_and_unknown_machines_are_refused_by_name(stack, production_run):
    path = f"/api/deployment-runs/{production_run['run_id']}/machines"
    bad = stack.functions.request("POST", f"{path}/prod-01/verdict", body={"result": "maybe"})
    assert bad.status_code == 400 and body(bad)["error"]["details"][0]["field"] == "result"
    missing = stack.functions.request("POST", f"{path}/nobody/verdict", body={"result": "pass"})
    assert missing.status_code == 404


def test_a_manual_rollback_restores_a_machine_within_the_retention(stack, production_run):
    run_id = production_run["run_id"]
    path = f"/api/deployment-runs/{run_id}/machines/prod-01/rollback"
    empty = stack.functions.request("POST", path, body={"justification": ""})
    assert empty.status_code == 400
    started = stack.functions.request("POST", path, body={"justification": "reports broken since the patch"})
    assert started.status_code == 202, started.get_body()
    instance = body(started)["runId"]
    final = stack.durable.wait_for_completion(instance, timeout=RUN_TIMEOUT)
    assert final["runtimeStatus"] == "Completed" and final["output"]["state"] == "restored", final
    assert installed(stack, "prod-01") == production_run["before"]["prod-01"]
    machine = by_computer(body(stack.functions.request("GET", f"/api/deployment-runs/{run_id}")))["prod-01"]
    assert machine["status"] == "rolled back" and "reports broken" in machine["reason"]
    again = stack.functions.request("POST", path, body={"justification": "again"})
    assert again.status_code == 409 and body(again)["error"]["code"] == "AlreadyRestored"
    none = stack.functions.request("POST", f"/api/deployment-runs/{run_id}/machines/sick-01/rollback",
                                   body={"justification": "no snapshot was taken"})
    assert none.status_code == 404 and body(none)["error"]["code"] == "NoRestorePoint"


def test_an_arc_server_under_a_snapshot_policy_is_skipped_as_it_cannot_be_rolled_back(stack):
    before = installed(stack, "arc-01")
    run = finished(stack, deploy(stack, "safe-arc", {"machines": [rid("arc-01")]}))
    machine = by_computer(run)["arc-01"]
    assert machine["status"] == "skipped" and machine["reason"].startswith("cannot be rolled back: an Arc")
    assert machine["rollback"] == "not possible" and installed(stack, "arc-01") == before


def test_with_snapshot_all_the_data_disks_are_restored_too(stack):
    policy = {"checks": [{"name": "app-probe", "type": "command", "script": ["systemctl is-active app"]}],
              "snapshot": "all", "snapshotRetentionDays": RETENTION_DAYS}
    before = installed(stack, "data-01")
    run_id = deploy(stack, "safe-all-disks", {"machines": [rid("data-01")]}, safety=policy)
    machine = by_computer(finished(stack, run_id))["data-01"]
    assert machine["status"] == "rolled back", machine["reason"]
    point = restore_points(load_settings()).get(machine_key(rid("data-01")), run_id)
    assert point is not None and sorted(s.lun is None for s in point.snapshots) == [False, True]
    restored = {s.lun: s.restored_disk_id.lower() for s in point.snapshots}
    attached = {d.lun: d.disk_id.lower() for d in _vm_disks(stack, "data-01")}
    assert attached == restored and installed(stack, "data-01") == before


def _vm_disks(stack: LocalStack, name: str) -> list[Any]:
    """The VM's disks as ARM shows them now (the OS disk first, then data disks by lun)."""
    settings = load_settings()
    return list(DiskOperations(credential_for(settings), settings.arm_endpoint, SUB).vm(rid(name)).disks)


def test_a_log_query_check_passes_on_no_row_and_keeps_a_machine_unpatched_on_a_row(stack):
    quiet = {"checks": [{"name": "app-errors", "type": "logQuery",
                         "query": 'Heartbeat_CL | where ResourceId =~ {resourceId} and Computer == "x"'}]}
    noisy = {"checks": [{"name": "heartbeats", "type": "logQuery", "lookbackMinutes": 1440,
                         "query": "Heartbeat_CL | where ResourceId =~ {resourceId} | project Computer"}]}
    passed = by_computer(finished(stack, deploy(stack, "safe-log-quiet", {"machines": [rid("log-01")]},
                                                safety=quiet)))["log-01"]
    assert (passed["status"], passed["health"]) == ("succeeded", "passed"), passed["reason"]
    before = installed(stack, "log-02")
    stopped = by_computer(finished(stack, deploy(stack, "safe-log-noisy", {"machines": [rid("log-02")]},
                                                 safety=noisy)))["log-02"]
    assert stopped["status"] == "skipped", stopped["reason"]
    assert stopped["reason"].startswith("unhealthy before install: heartbeats: ") and "Computer=log-02" in (
        stopped["reason"])
    assert installed(stack, "log-02") == before

def test_expired_snapshots_are_deleted_and_replaced_disks_survive_their_own_retention(stack, test_ring_run):
    assert stack.arm is not None and stack.functions is not None
    points = restore_points(load_settings())
    point = points.get(machine_key(rid("safe-01")), test_ring_run["run"]["runId"])
    assert point is not None and point.state is PointState.RESTORED and point.taken_at and point.restored_at
    snapshot_ids = [s.snapshot_id for s in point.snapshots]
    replaced = [r.disk_id for r in point.replaced]
    assert snapshot_ids and replaced
    stack.clock.advance_to(point.taken_at + timedelta(days=RETENTION_DAYS, minutes=1))
    stack.functions.fire_timer("clean_rollback_points")
    stack.clock.advance(timedelta(minutes=1))
    assert all(_resource(stack, s) is None for s in snapshot_ids)
    assert all(_resource(stack, d) is not None for d in replaced)  # kept until its own expiry
    stack.clock.advance_to(point.restored_at + timedelta(days=RETENTION_DAYS, minutes=1))
    stack.functions.fire_timer("clean_rollback_points")
    stack.clock.advance(timedelta(minutes=1))
    assert all(_resource(stack, d) is None for d in replaced)
    assert points.get(machine_key(rid("safe-01")), test_ring_run["run"]["runId"]) is None


def test_a_manual_rollback_is_refused_once_the_snapshots_expired(stack, production_run):
    point = restore_points(load_settings()).get(machine_key(rid("prod-02")), production_run["run_id"])
    prod = restore_points(load_settings()).get(machine_key(rid("prod-01")), production_run["run_id"])
    assert point is None and prod is not None and prod.expires_at is not None
    stack.clock.advance_to(max(stack.clock.now(), prod.expires_at + timedelta(minutes=1)))
    late = stack.functions.request(
        "POST", f"/api/deployment-runs/{production_run['run_id']}/machines/prod-01/rollback",
        body={"justification": "too late"})
    assert late.status_code == 410 and body(late)["error"]["code"] == "RestorePointExpired", late.get_body()


def test_the_next_ring_is_refused_while_the_previous_one_failed_its_health_gate(stack, test_ring_run):
    """With ringBakeHours on the category, the production ring waits for a healthy, baked test ring; the
    test ring's last run rolled a machine back, so the production ring's run is refused, naming it."""
    category = ringed_category(CATEGORY, "safe rollouts", SUB, requiresApproval=False,
                               safety=POLICY | {"ringBakeHours": 24})
    edited = stack.functions.request("PUT", f"/api/categories/{CATEGORY}", body=category)
    assert edited.status_code == 200, edited.get_body()
    try:
        run_id = deploy(stack, "safe-production-ring", {"categories": [{"category": CATEGORY,
                                                                        "ring": "production"}]})
        run = finished(stack, run_id)
        assert run["state"] == "failed" and run["machines"] == []
        assert "failed its health gate in run " + test_ring_run["run"]["runId"] in run["error"], run["error"]
    finally:  # the category as the other tests found it
        stack.functions.request("PUT", f"/api/categories/{CATEGORY}",
                                body=ringed_category(CATEGORY, "safe rollouts", SUB, requiresApproval=False,
                                                     safety=POLICY))



def test_the_next_ring_waits_until_a_healthy_previous_ring_has_baked(stack, test_ring_run):
    """A healthy test-ring run (openssl only this time), then the production ring: its run waits on a
    durable timer until the test ring's run ended ringBakeHours ago, then resolves its machines."""
    healthy = finished(stack, deploy(stack, "safe-test-ring-2", {"categories": [{"category": CATEGORY,
                                                                                "ring": "test"}]},
                                     classifications=["Critical", "Security"]))
    assert {m["status"] for m in healthy["machines"]} == {"succeeded"}, healthy["machines"]
    category = ringed_category(CATEGORY, "safe rollouts", SUB, requiresApproval=False,
                               safety=POLICY | {"ringBakeHours": 24})
    assert stack.functions.request("PUT", f"/api/categories/{CATEGORY}", body=category).status_code == 200
    run = finished(stack, deploy(stack, "safe-production-ring-2", {"categories": [{"category": CATEGORY,
                                                                                  "ring": "production"}]},
                                 classifications=["Critical", "Security"]))
    assert run["state"] == "completed" and run["machines"], run
    baked = datetime.fromisoformat(healthy["finished"]) + timedelta(hours=24)
    assert datetime.fromisoformat(run["windowStart"]) >= baked
