"""``python -m local run`` then ``python -m local serve`` on one state folder, as a newcomer goes: one clock
across both (what ``run`` wrote is current when ``serve`` shows it), and a live host whose timers fire on
that clock at ``--speed``: a one-time deployment scheduled two minutes ahead starts on time and finishes,
the light check and the assessments fire on their (short) schedules.

Both commands run as the README gives them, in their own processes, on a two-machine fleet.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from typing import Any

import pytest

from local.arm.fleet import parse_fleet
from local.clock import saved_clock
from local.stack import REPO_ROOT

pytestmark = pytest.mark.e2e

SUB = "55555555-5555-4555-8555-555555555556"
START_TIMEOUT = 90
RUN_TIMEOUT = 180
LIVE_TIMEOUT = 90


def _vm(name: str, os_type: str, updates: list[str]) -> dict[str, Any]:
    os_name, version = ("ubuntu", "22.04") if os_type == "Linux" else ("Windows Server 2022 Datacenter",
                                                                       "10.0.20348.2227")
    return {"subscription": SUB, "resourceGroup": "rg-serve", "name": name, "kind": "azure-vm",
            "osType": os_type, "osName": os_name, "osVersion": version, "location": "westeurope",
            "availableUpdates": updates, "tags": {"env": "test"}, "behaviours": {}}  # fmt: skip


FLEET = parse_fleet({"subscriptions": [{"id": SUB}], "machines": [
    _vm("serve-lin-01", "Linux", ["openssl", "sudo"]),
    _vm("serve-win-01", "Windows", ["KB5034129"]),
]})  # fmt: skip
# "[2026-01-13 02:45:00 UTC] timer light_check fired (0 */2 * * * *)"; late: "(..., due 02:44:00, 31 s late)"
_FIRED = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC\] timer (\w+) fired \((.*?)(?:, due (\d\d:\d\d:\d\d).*)?\)$")


def _when(text: str | None) -> datetime:
    assert text, "no time given"
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, body: Any) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _queries(items: list[dict[str, Any]]) -> Any:
    for item in items:
        if item.get("kind") == "query":
            yield item
        yield from _queries(item.get("items") or [])


class Serve:
    """``python -m local serve`` on a state folder, its output collected line by line."""

    def __init__(self, fleet: Path, state_dir: Path, speed: float, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "local", "serve", "--fleet", str(fleet), "--state-dir", str(state_dir),
             "--speed", str(speed)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not any(line.startswith("Ctrl-C") for line in list(self.lines)):
            assert self.process.poll() is None, "\n".join(self.lines)
            assert time.monotonic() < deadline, "serve did not start:\n" + "\n".join(self.lines)
            time.sleep(0.05)
        self.api = self._after("API")
        self.workbook = self._after("Workbook").split()[0]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def _after(self, label: str) -> str:
        return next(line[len(label):].strip() for line in self.lines if line.startswith(label + " "))

    def fired(self, timer: str) -> list[tuple[datetime, datetime]]:
        """(the occurrence it fired for, when it fired) of each firing of ``timer``."""
        found = [_FIRED.match(line) for line in list(self.lines)]
        fired = []
        for match in found:
            if match and match[2] == timer:
                at = datetime.fromisoformat(match[1]).replace(tzinfo=UTC)
                due = at
                if match[4] is not None:
                    due = datetime.combine(at.date(), time_of_day.fromisoformat(match[4]), UTC)
                fired.append((due if due <= at else due - timedelta(days=1), at))
        return fired

    def stop(self) -> str:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def fleet_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fleet") / "fleet.json"
    FLEET.save(path)
    return path


def _run(fleet_file: Path, state_dir: Path, *extra: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "local", "run", "--fleet", str(fleet_file), "--state-dir", str(state_dir),
         *extra],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_serve_goes_on_from_the_clock_run_stopped_and_shows_its_data_as_current(fleet_file, tmp_path):
    state = tmp_path / "state"
    first = _run(fleet_file, state)
    assert "Starting from nothing" in first
    second = _run(fleet_file, state)  # a second run adds to the first: nothing is wiped
    assert "Adding the demo data" in second and "is already in the state" in second
    stopped = saved_clock(state)
    assert stopped is not None

    serve = Serve(fleet_file, state, speed=60)
    try:
        clock_line = serve._after("Clock")
        assert clock_line.startswith(stopped.now.strftime("%Y-%m-%d %H:%M:%S")), clock_line
        machines = _get(f"{serve.api}/machines")["machines"]
        assert {m["computerName"] for m in machines} == {"serve-lin-01", "serve-win-01"}
        for machine in machines:
            assessed = _when(machine["lastAssessed"])
            assert stopped.now - timedelta(hours=1) <= assessed <= stopped.now, machine

        runs = _get(f"{serve.api}/deployments/linux-critical-demo/runs")["runs"]
        assert len(runs) == 2, runs  # one per `run`: the second kept the first's
        for summary in runs:
            run = _get(f"{serve.api}/deployment-runs/{summary['runId']}")
            created, finished = _when(run["created"]), _when(run["finished"])
            assert run["state"] == "completed", run
            assert created <= _when(run["windowStart"]) <= finished <= stopped.now, run
        deployment = _get(f"{serve.api}/deployments/linux-critical-demo")
        assert _when(deployment["created"]) <= min(_when(r["created"]) for r in runs), deployment

        # Every tab of the workbook: its time range ends at the served clock, so the data is inside it.
        tabs = _get(f"{serve.workbook}data")["items"]
        names = [t["value"] for item in tabs if item.get("kind") == "tabs" for t in item["tabs"]]
        assert names
        for tab in names:
            document = _get(f"{serve.workbook}data?selectedTab={tab}")
            views = list(_queries(document["items"]))
            with_rows = [view["name"] for view in views if view.get("rows")]
            assert with_rows, f"tab {tab}: no view shows rows ({[v['name'] for v in views]})"
    finally:
        output = serve.stop()
    after = saved_clock(state)
    assert after is not None and after.now > stopped.now, output  # serve's clock kept for the next command


def test_serve_fires_the_timers_on_its_sped_up_clock(fleet_file, tmp_path):
    state = tmp_path / "state"
    schedules = {
        "FLEET_DISCOVERY_SCHEDULE": "0 */2 * * * *",
        "LIGHT_CHECK_SCHEDULE": "0 */2 * * * *",
        "ASSESSMENT_SCHEDULE_LINUX": "0 */3 * * * *",
        "ASSESSMENT_SCHEDULE_WINDOWS": "0 */3 * * * *",
    }
    serve = Serve(fleet_file, state, speed=60, env=schedules)
    try:
        deadline = time.monotonic() + LIVE_TIMEOUT
        while len(_get(f"{serve.api}/machines")["machines"]) < 2:
            assert time.monotonic() < deadline, "discovery never fired:\n" + "\n".join(serve.lines)
            time.sleep(0.2)

        now = saved_clock(state)
        assert now is not None
        at = (now.now + timedelta(minutes=3)).replace(second=0, microsecond=0)  # two minutes ahead, or more
        _post(f"{serve.api}/deployments", {
            "name": "once-soon", "operatingSystem": "Linux",
            "targets": {"groups": [{"filter": {}}], "evaluateGroupsAt": "run"},
            "classifications": ["Critical and security updates"],
            "schedule": {"startTime": at.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "maintenanceWindowMinutes": 120, "rebootSetting": "IfRequired",
        })  # fmt: skip
        run: dict[str, Any] = {}
        while not run.get("finished"):
            assert time.monotonic() < deadline, f"no finished run: {run}\n" + "\n".join(serve.lines)
            runs = _get(f"{serve.api}/deployments/once-soon/runs")["runs"]
            run = _get(f"{serve.api}/deployment-runs/{runs[0]['runId']}") if runs else {}
            time.sleep(0.2)
        assert run["trigger"] == "schedule" and run["state"] == "completed", run
        assert _when(run["windowStart"]) == at, run
        # The scheduler looks every minute: the run starts in the minute it is due (a minute more allowed for
        # a loaded machine: at 60x a clock minute is one real second).
        assert at <= _when(run["created"]) < at + timedelta(minutes=2), run
        assert run["results"]["succeeded"] == 1, f"{run}\n" + "\n".join(serve.lines[-60:])

        while len(serve.fired("assess_linux_fleet")) < 1 or len(serve.fired("light_check")) < 2:
            assert time.monotonic() < deadline, "\n".join(serve.lines)
            time.sleep(0.2)
        machines = {m["computerName"]: m for m in _get(f"{serve.api}/machines")["machines"]}
    finally:
        output = serve.stop()
    # Each firing serves an occurrence of its schedule, once, in order (a busy timer may fire late, under
    # load a second of real time is a minute of this clock, but it never fires early or twice).
    for timer, minutes in (("light_check", 2), ("assess_linux_fleet", 3), ("assess_windows_fleet", 3),
                           ("schedule_deployments", 1)):
        fired = serve.fired(timer)
        assert fired, f"{timer} never fired:\n{output}"
        dues = [due for due, _ in fired]
        assert dues == sorted(set(dues)), f"{timer}:\n{output}"
        for due, at in fired:
            assert due.minute % minutes == 0 and due.second == 0 and at >= due, f"{timer} {due}:\n{output}"
    linux_assessed = serve.fired("assess_linux_fleet")[0][0]
    assert _when(machines["serve-lin-01"]["lastAssessed"]) >= linux_assessed, machines
