"""Busy and not-assessable decided by the machine, end to end: an assessment run and a deployment run meet
machines that answer 409 ``OperationNotAllowed`` while another patch operation runs on them (the
platform's periodic assessment, Azure Update Manager: the fleet file's ``busySeconds``, or one started
right before a run), one of which is deallocated by an auto-shutdown while the product waits to retry.

The running ones are retried with growing waits and then assessed or patched; the deallocated one is
recorded not assessable (not reachable, in a deployment) with the code and message ARM answered.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from local.arm.fleet import parse_fleet
from local.clock import VirtualClock
from local.stack import LocalStack
from shared.deployments.runs_table import run_store
from shared.settings import load_settings

pytestmark = pytest.mark.e2e

SUB = "55555555-5555-4555-8555-555555555555"
UPDATES = ["openssl", "sudo", "libc6", "tzdata"]
# Busy for less than the retries wait in all (30 + 60 + 120 + 240 s), so the third or fourth gets in.
SHORT_BUSY = 100
# Busy for longer than every retry: only the shutdown ends the waiting.
LONG_BUSY = 3_000
SHUTDOWN_AFTER = timedelta(seconds=45)  # after the first refused POST, before the second retry
RUN_TIMEOUT = 240


def _machine(group: str, name: str, kind: str = "azure-vm", busy: int = SHORT_BUSY) -> dict[str, Any]:
    return {"subscription": SUB, "resourceGroup": group, "name": name, "kind": kind, "osType": "Linux",
            "osName": "ubuntu", "osVersion": "22.04", "location": "westeurope", "availableUpdates": UPDATES,
            "behaviours": {"busySeconds": busy}}  # fmt: skip


FLEET = parse_fleet({"subscriptions": [{"id": SUB}], "machines": [
    _machine("rg-assess", "busy-01"),
    _machine("rg-assess", "arc-busy-01", kind="arc-server"),
    _machine("rg-assess", "shutdown-01", busy=LONG_BUSY),
    _machine("rg-deploy", "deploy-busy-01", busy=0),
    _machine("rg-deploy", "deploy-shutdown-01", busy=0),
]})  # fmt: skip


def _id(group: str, name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{name}"


@pytest.fixture(scope="module")
def stack():
    # Deployments are created at the real time; the virtual clock starts there too (as test_deployments).
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    with LocalStack(FLEET, clock=VirtualClock(start)).start() as running:
        yield running


def _body(response: Any) -> Any:
    return json.loads(response.get_body())


def _posts(stack: LocalStack, name: str, operation: str) -> list[int]:
    """The statuses of the POSTs of one patch operation on one machine, in order."""
    return [r.status for r in stack.arm.requests if r.method == "POST" and r.path.endswith(operation)
            and r.machine and r.machine.endswith(f"/{name}")]


def test_an_assessment_retries_the_busy_machines_and_records_the_deallocated_one_with_the_raw_code(stack):
    stack.arm.simulation.set_power_state(
        _id("rg-assess", "shutdown-01"), "deallocated", at=stack.clock.now() + SHUTDOWN_AFTER
    )
    started = stack.functions.request("POST", "/api/assessments", body={"resourceGroups": ["rg-assess"]})
    assert started.status_code == 202, started.get_body()
    final = stack.durable.wait_for_completion(_body(started)["runId"], timeout=RUN_TIMEOUT)
    assert final["runtimeStatus"] == "Completed", final["output"]
    output = final["output"]
    assert (output["machines"], output["assessed"], output["not_assessable"]) == (3, 2, 1)
    assert output["failed"] == 0

    listed = _body(stack.functions.request("GET", "/api/machines"))["machines"]
    machines = {m["resourceId"].rsplit("/", 1)[1]: m for m in listed}
    for name in ("busy-01", "arc-busy-01"):
        posts = _posts(stack, name, "/assessPatches")
        assert posts[0] == 409 and posts[-1] == 202 and len(posts) >= 3, posts  # refused, retried, in
        assert machines[name]["readiness"] == "Ready" and machines[name]["lastAssessed"], machines[name]
    off = machines["shutdown-01"]
    assert off["readiness"] == "NotAssessable", off
    # The code and message ARM answered, as they came; the hint says what to do.
    assert off["lastError"].startswith("OperationNotAllowed: ") and "deallocated" in off["lastError"]
    assert "start it" in off["lastErrorHint"]
    assert _posts(stack, "shutdown-01", "/assessPatches")[0] == 409


def test_a_deployment_retries_the_busy_vm_and_records_the_deallocated_one_not_reachable_with_the_raw_code(
    stack,
):
    spec = {
        "name": "busy-machines", "operatingSystem": "Linux",
        "targets": {"groups": [{"filter": {"resourceGroups": ["rg-deploy"]}}]},
        "classifications": ["Critical and security updates"],
        "schedule": {"startTime": "2099-01-01T02:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 180, "rebootSetting": "Never",
    }  # fmt: skip
    created = stack.functions.request("POST", "/api/deployments", body=spec)
    assert created.status_code == 201, created.get_body()
    simulation = stack.arm.simulation
    simulation.start_platform_assessment(_id("rg-deploy", "deploy-busy-01"), timedelta(seconds=SHORT_BUSY))
    shutdown = _id("rg-deploy", "deploy-shutdown-01")
    simulation.start_platform_assessment(shutdown, timedelta(seconds=LONG_BUSY))
    simulation.set_power_state(shutdown, "deallocated", at=stack.clock.now() + SHUTDOWN_AFTER)
    started = stack.functions.request("POST", f"/api/deployments/{spec['name']}/runs")
    assert started.status_code == 202, started.get_body()
    run_id = _body(started)["runId"]
    final = stack.durable.wait_for_completion(run_id, timeout=RUN_TIMEOUT)
    assert final["runtimeStatus"] == "Completed", final.get("output")

    rows = {row["Computer"]: row for row in run_store(load_settings()).machines(run_id)}
    busy = rows["deploy-busy-01"]
    assert busy["State"] == "succeeded" and busy["Installed"] > 0, busy
    prescan = _posts(stack, "deploy-busy-01", "/assessPatches")
    assert prescan[0] == 409 and 202 in prescan, prescan  # the pre-scan waited its turn
    off = rows["deploy-shutdown-01"]
    assert off["State"] == "not reachable", off
    assert off["ErrorCode"] == "OperationNotAllowed" and "deallocated" in off["ErrorMessage"], off
    assert _posts(stack, "deploy-shutdown-01", "/installPatches") == []
