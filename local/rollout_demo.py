"""A health-gated rollout with an automatic rollback on the demo fleet (issue 14), driven over HTTP on a
running local host after its assessment, as ``make run``'s last step:

1. an asset category of three Ubuntu 22.04 VMs, all on its ``test`` ring, with a safety policy: the agent
   must be ready and an application probe (Run Command) must pass before and after each install, the OS
   disk is snapshotted before it, and a failed check rolls the machine back;
2. a run on the test ring of the category's "Other" updates, one machine at a time with an error budget of
   one: the first machine's ``tzdata`` update breaks its application (the fleet file's ``breaksHealth``),
   its probe fails after the install, the machine is restored from its snapshot (its packages and health
   are those of before), the error budget is spent and the other two are ``skipped: health gate``;
3. what the record shows: the update ``failed`` for the category, the machine's change history (install,
   then rollback, with times), the ``Machine.RolledBack`` notification.

:func:`run_rollout_demo` returns what happened (:class:`RolloutDemo`); local/run.py prints it. It answers
None on a fleet without the demo fleet's machines for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from local.arm.health import update_label
from local.governance_demo import AUDITOR, OPERATOR_A, Api, DemoError, quoted
from local.stack import LocalStack

# The demo fleet's Ubuntu 22.04 VMs of one resource group each; the first (in start order) has an
# update that breaks its application (local/fleets/demo.yaml: breaksHealth).
MACHINES = ("file-prod-018", "sql-prod-037", "web-prod-012")
CATEGORY_PREFIX = "jammy-web"
DESCRIPTION = "Ubuntu 22.04 application VMs (the make run demo of safe rollouts)"
TEST_RING = "test"
PROBE = "app-probe"
POLICY: dict[str, Any] = {
    "checks": [
        {"name": "agent", "type": "agentReady", "withinMinutes": 15},
        {"name": PROBE, "type": "command", "timeoutMinutes": 5,
         "script": ["systemctl is-active --quiet app && curl -fsS localhost/health"]},
    ],
    "bakeMinutes": 30, "recheckMinutes": 10, "snapshot": "os", "snapshotRetentionDays": 7,
}  # fmt: skip
RUN_TIMEOUT_SECONDS = 240
_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class MachineResult:
    computer: str
    status: str
    reason: str
    health: str
    rollback: str


@dataclass(frozen=True)
class RolledBack:
    computer: str
    updates: tuple[str, ...]  # what the rollback took off (name=version)
    update_states: dict[str, str]  # each one's state in the category afterwards
    installed_at: datetime | None
    rolled_back_at: datetime | None
    packages_restored: bool  # the machine's installed packages equal those before the run
    healthy_again: bool
    notified: bool


@dataclass(frozen=True)
class RolloutDemo:
    category: str
    deployment: str
    run_id: str
    stop_reason: str | None
    machines: tuple[MachineResult, ...]
    rolled_back: RolledBack | None


def demo_fits(stack: LocalStack) -> bool:
    assert stack.arm is not None
    names = {m.name for m in stack.arm.simulation.fleet.machines}
    return all(name in names for name in MACHINES)


def retire_earlier_rollout_demos(api: Api) -> list[str]:
    """Delete the categories (and their deployments) an earlier run of this demo left in the state."""
    retired = []
    for deployment in api.ok(AUDITOR, "GET", "/api/deployments")["deployments"]:
        if deployment["name"].startswith(CATEGORY_PREFIX):
            api.ok(OPERATOR_A, "DELETE", f"/api/deployments/{quoted(deployment['name'])}", expect=(200, 204))
    for category in api.ok(AUDITOR, "GET", "/api/categories")["categories"]:
        if category.get("description") == DESCRIPTION:
            api.ok(OPERATOR_A, "DELETE", f"/api/categories/{quoted(category['name'])}", expect=(200, 204))
            retired.append(category["name"])
    return retired


def run_rollout_demo(stack: LocalStack) -> RolloutDemo | None:
    """The whole process on the running ``stack`` (served over HTTP, after discovery and assessment)."""
    assert stack.api_base_url and stack.durable and stack.arm
    if not demo_fits(stack):
        return None
    api = Api(stack.api_base_url)
    retire_earlier_rollout_demos(api)
    suffix = f"{stack.clock.now():%m%d%H%M}"
    category, deployment = f"{CATEGORY_PREFIX}-{suffix}", f"{CATEGORY_PREFIX}-test-{suffix}"
    members = {m["computerName"]: m for m in api.ok(AUDITOR, "GET", "/api/machines?pageSize=500")["machines"]
               if m["computerName"] in MACHINES}
    ids = [members[name]["resourceId"] for name in MACHINES if name in members]
    if len(ids) != len(MACHINES):
        raise DemoError(f"the demo needs {', '.join(MACHINES)} discovered; found {', '.join(members)}")
    api.ok(OPERATOR_A, "POST", "/api/categories", {
        "name": category, "description": DESCRIPTION, "role": "application servers", "criticality": 2,
        "owner": {"name": "App team", "contact": "app-team@example.com"}, "priority": 5, "patchOrder": 2,
        "membership": {"machineIds": ids},
        "rings": [{"name": TEST_RING, "membership": {"machineIds": ids}}, {"name": "production"}],
        "requiresApproval": False, "safety": POLICY,
    }, expect=201)  # fmt: skip
    before = {rid: _installed(stack, rid) for rid in ids}
    received = len(stack.events.events) if stack.events else 0
    api.ok(OPERATOR_A, "POST", "/api/deployments", {
        "name": deployment, "operatingSystem": "Linux",
        "targets": {"categories": [{"category": category, "ring": TEST_RING}]},
        "classifications": ["Other"], "schedule": {"startTime": "2099-01-01T02:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 240, "rebootSetting": "IfRequired",
        "rollout": {"maxConcurrent": 1, "errorBudget": 1},
    }, expect=201)  # fmt: skip
    run_id = api.ok(OPERATOR_A, "POST", f"/api/deployments/{quoted(deployment)}/runs", expect=202)["runId"]
    _wait(stack, run_id)
    run = api.ok(AUDITOR, "GET", f"/api/deployment-runs/{quoted(run_id)}")
    results = tuple(
        MachineResult(m["computer"], m["status"], m.get("reason") or "", m.get("health") or "",
                      m.get("rollback") or "")
        for m in run["machines"]
    )  # fmt: skip
    rolled = next((m for m in run["machines"] if m["status"] == "rolled back"), None)
    rolled_back = None
    if rolled is not None:
        rid = rolled["resourceId"]
        changes = api.ok(AUDITOR, "GET", f"/api/machines/{quoted(rid)}/changes")["changes"]
        taken_off = [c for c in changes if c.get("status") == "rolled back" and c.get("runId") == run_id]
        installed = [c for c in changes if c.get("status") == "succeeded" and c.get("runId") == run_id]
        keys = tuple(sorted({c["key"] for c in taken_off}))
        states = {}
        for key in keys:
            shown = api.ok(AUDITOR, "GET", f"/api/patches/Linux/{quoted(key)}")
            states[key] = next((c["state"] for c in shown["categories"] if c["category"] == category), "?")
        events = stack.events.events[received:] if stack.events else []
        rolled_back = RolledBack(
            computer=rolled["computer"], updates=keys, update_states=states,
            installed_at=_moment(min((c["at"] for c in installed), default=None)),
            rolled_back_at=_moment(max((c["at"] for c in taken_off), default=None)),
            packages_restored=_installed(stack, rid) == before[rid],
            healthy_again=stack.arm.simulation.machine(rid).health_failure() is None,
            notified=any(e.get("type") == "PatchManagement.Machine.RolledBack" for e in events),
        )  # fmt: skip
    return RolloutDemo(category, deployment, run_id, run.get("stopReason"), results, rolled_back)


def _installed(stack: LocalStack, resource_id: str) -> list[str]:
    assert stack.arm is not None
    return sorted(update_label(u) for u in stack.arm.simulation.machine(resource_id).installed)


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _wait(stack: LocalStack, run_id: str) -> None:
    assert stack.durable is not None
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        status = stack.durable.get_status(run_id)
        if status and status.get("runtimeStatus") in ("Completed", "Failed", "Terminated"):
            if status["runtimeStatus"] != "Completed":
                raise DemoError(f"run {run_id} ended {status['runtimeStatus']}: {status.get('output')}")
            return
        time.sleep(_POLL_SECONDS)
    raise DemoError(f"run {run_id} did not end within {RUN_TIMEOUT_SECONDS} s")
