"""A real Functions host process killed by SIGKILL in the middle of a deployment and of an assessment,
then started again on the same state folder, as a crash on Azure would go.

This test process plays Azure (``LocalStack.start_azure()``: Azurite, ARM with its fleet, Log Analytics,
Resource Graph), so they outlive the host; the host runs as ``python -m local host``, keeps its task hub
in Azurite (local/durable/store.py) and resumes from it. Time runs ``SPEED`` times faster in both
processes (local/clock.py ScaledClock), so a maintenance window passes in seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from local.arm.fleet import parse_fleet
from local.clock import ScaledClock
from local.host_process import HOST_FILE
from local.stack import REPO_ROOT, LocalStack

pytestmark = pytest.mark.e2e

SUB = "55555555-5555-4555-8555-555555555555"
SPEED = 300.0
UPDATES = ["openssl", "sudo", "libc6", "tzdata"]
DEPLOY = [f"kill-dep-{n:02d}" for n in range(1, 7)]
ASSESS = [f"kill-ass-{n:02d}" for n in range(1, 7)]
START_TIMEOUT = 60
RUN_TIMEOUT = 120
# The line the runner logs when it takes over a task hub (local/durable/runner.py _resume_from_store).
_RESUMED = re.compile(r"resumed the task hub from storage: \d+ instances \((\d+) live\), (\d+) activities")


def _vm(group: str, name: str) -> dict[str, Any]:
    return {"subscription": SUB, "resourceGroup": group, "name": name, "kind": "azure-vm", "osType": "Linux",
            "osName": "ubuntu", "osVersion": "22.04", "location": "westeurope", "availableUpdates": UPDATES,
            "tags": {"group": group}, "behaviours": {}}  # fmt: skip


FLEET = parse_fleet({"subscriptions": [{"id": SUB}], "machines": [
    *[_vm("rg-kill-deploy", name) for name in DEPLOY],
    *[_vm("rg-kill-assess", name) for name in ASSESS],
]})  # fmt: skip


class Host:
    """``python -m local host`` on the state folder: started, killed, started again."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.api = ""
        self.starts = 0

    def start(self) -> None:
        (self.state_dir / HOST_FILE).unlink(missing_ok=True)
        log = open(self.state_dir / f"host-{self.starts}.log", "wb")  # noqa: SIM115 - the child's output
        self.process = subprocess.Popen(
            [sys.executable, "-m", "local", "host", "--state-dir", str(self.state_dir)],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT
        while not (self.state_dir / HOST_FILE).exists():
            assert self.process.poll() is None, (self.state_dir / f"host-{self.starts - 1}.log").read_text()
            assert time.monotonic() < deadline, "the host did not start"
            time.sleep(0.05)
        self.api = json.loads((self.state_dir / HOST_FILE).read_text())["api"]

    def resumed(self) -> list[tuple[int, int]]:
        """(live instances, activities delivered again) of each start that found a task hub to resume."""
        found = []
        for n in range(self.starts):
            text = (self.state_dir / f"host-{n}.log").read_text()
            match = _RESUMED.search(text)
            if match:
                found.append((int(match[1]), int(match[2])))
        return found

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.api}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def wait_for_run(self, run_id: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code, run = self.call("GET", f"/api/runs/{run_id}")
            if code == 200 and run["status"] in ("Completed", "Failed", "Terminated"):
                return dict(run)
            time.sleep(0.2)
        last = self.call("GET", f"/api/runs/{run_id}")
        raise TimeoutError(f"{run_id} did not end within {timeout}s: {last}")


@pytest.fixture(scope="module")
def azure(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("host-kill")
    clock = ScaledClock(datetime(2027, 1, 4, 1, 0, tzinfo=UTC), SPEED)
    stack = LocalStack(FLEET, clock=clock, state_dir=state_dir).start_azure()
    host = Host(state_dir)
    try:
        host.start()
        code, started = host.call("POST", "/api/discoveries", {})
        assert code == 202, started
        assert host.wait_for_run(started["runId"])["status"] == "Completed"
        assert len(_machines(host)) == len(FLEET.machines)
        yield stack, host
    finally:
        host.stop()
        stack.stop()


def _machines(host: Host) -> list[dict[str, Any]]:
    code, body = host.call("GET", "/api/machines")
    return body["machines"] if code == 200 else []


def _wait(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _installs(stack: LocalStack, machine: str) -> int:
    assert stack.arm
    return stack.arm.count(method="POST", machine=machine, path_contains="installPatches", status=202)


def test_a_host_killed_in_the_middle_of_a_deployment_resumes_it_without_a_second_install(azure):
    stack, host = azure
    spec = {
        "name": "killed-mid-run", "operatingSystem": "Linux",
        "targets": {"groups": [{"filter": {"resourceGroups": ["rg-kill-deploy"]}}]},
        "classifications": ["Critical and security updates"],
        "schedule": {"startTime": "2099-06-01T02:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 180, "rebootSetting": "IfRequired", "rollout": {"maxConcurrent": 2},
    }  # fmt: skip
    assert host.call("POST", "/api/deployments", spec)[0] == 201
    code, started = host.call("POST", "/api/deployments/killed-mid-run/runs")
    assert code == 202, started
    run_id = started["runId"]
    kills = 0
    # Kill while installs are under way: once when the first machines install, once half-way.
    for installed_before_kill in (1, len(DEPLOY) // 2 + 1):
        _wait(lambda n=installed_before_kill: sum(_installs(stack, m) for m in DEPLOY) >= n, RUN_TIMEOUT)
        assert host.call("GET", f"/api/runs/{run_id}")[1]["status"] == "Running"  # killed mid-way
        host.kill()
        kills += 1
        host.start()
    run = host.wait_for_run(run_id)
    assert run["status"] == "Completed", run
    assert kills == 2
    resumed = host.resumed()
    assert len(resumed) >= 2 and all(live > 0 for live, _ in resumed[-2:]), resumed
    installs = {m: _installs(stack, m) for m in DEPLOY}
    assert installs == {m: 1 for m in DEPLOY}, f"installs per machine: {installs}"
    code, details = host.call("GET", f"/api/deployment-runs/{run_id}")
    assert code == 200 and details["state"] != "running", details
    assert {m["computer"]: m["status"] for m in details["machines"]} == {m: "succeeded" for m in DEPLOY}
    assert stack.logs
    rows = stack.logs.query(f'UpdateRunMachine_CL | where UpdateRunId == "{run_id}" | project Computer')
    assert sorted(r["Computer"] for r in rows) == sorted(DEPLOY)


def test_a_host_killed_in_the_middle_of_an_assessment_assesses_every_machine(azure):
    stack, host = azure
    code, started = host.call("POST", "/api/assessments", {"resourceGroups": ["rg-kill-assess"]})
    assert code == 202, started
    run_id = started["runId"]
    assert stack.arm
    arm = stack.arm
    _wait(lambda: sum(arm.count(method="POST", machine=m, path_contains="assessPatches") for m in ASSESS),
          RUN_TIMEOUT)
    assert host.call("GET", f"/api/runs/{run_id}")[1]["status"] == "Running"  # killed mid-way
    host.kill()
    host.start()
    run = host.wait_for_run(run_id)
    assert run["status"] == "Completed", run
    assert host.resumed()[-1][0] > 0
    assert run["result"]["assessed"] == len(ASSESS), run["result"]
    assert stack.logs
    rows = stack.logs.query('UpdateSummary_CL | where ResourceGroup == "rg-kill-assess" | project Computer')
    assert {r["Computer"] for r in rows} == set(ASSESS)
