"""``make run``: the product's main job, through the real functions, on the demo fleet."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from local.arm.fleet import load_fleet
from local.report import table
from local.stack import DEFAULT_STATE_DIR, DEMO_FLEET, LocalStack

_WAIT_SECONDS = 120
_POLL_SECONDS = 0.1


def _say(text: str = "") -> None:
    print(text, flush=True)


def run(fleet_file: Path = DEMO_FLEET, state_dir: Path = DEFAULT_STATE_DIR) -> int:
    fleet = load_fleet(fleet_file)
    # Each run starts from a clean slate, so its summary describes this run only.
    for stale in ("azurite", "loganalytics.duckdb", "loganalytics.duckdb.wal"):
        path = state_dir / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    started = time.monotonic()
    _say(f"Starting the local host with {len(fleet.machines)} machines from {fleet_file.name} ...")
    with LocalStack(fleet, state_dir=state_dir).start() as stack:
        assert stack.functions and stack.durable and stack.logs and stack.arm and stack.azurite
        _say(f"  Azurite          tables on 127.0.0.1:{stack.azurite.table_port}")
        _say(f"  ARM stand-in     {stack.arm.base_url}")
        _say(f"  Log Analytics    {stack.logs.base_url}")
        _say("")
        _say("1. Fleet discovery (timer discover_fleet -> orchestration fleet_discovery_run)")
        stack.functions.fire_timer("discover_fleet")
        discovery = _latest_instance(stack, "discovery-")
        result = _follow(stack, discovery)
        _say("")
        _print_machines(stack)
        _print_log_analytics(stack)
        _say("")
        _say("Not built yet, so not run: assessment (issue 3) and update deployments (issue 4).")
        _say(f"Done in {time.monotonic() - started:.1f}s; discovery result: {json.dumps(result)}")
    _say("")
    _say(f"State kept in {state_dir}. Next:")
    _say("  .venv/bin/python -m local query 'Heartbeat_CL | summarize count() by OSType'")
    _say("  .venv/bin/python -m local serve    # the whole host, with the API on a local port")
    return 0


def _latest_instance(stack: LocalStack, prefix: str) -> str:
    assert stack.durable
    instances = [i for i in stack.durable.list_instances() if i["instanceId"].startswith(prefix)]
    if not instances:
        raise RuntimeError(f"the timer started no orchestration with an id starting {prefix!r}")
    return str(max(instances, key=lambda i: i["createdTime"])["instanceId"])


def _follow(stack: LocalStack, instance_id: str) -> Any:
    """Print the orchestration's custom status each time it changes, until it ends."""
    assert stack.durable
    deadline = time.monotonic() + _WAIT_SECONDS
    last = None
    while time.monotonic() < deadline:
        status = stack.durable.get_status(instance_id) or {}
        progress = status.get("customStatus")
        if progress != last and progress is not None:
            _say(f"   {instance_id}: {json.dumps(progress)}")
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


def _print_log_analytics(stack: LocalStack) -> None:
    assert stack.logs
    kql = (
        "Heartbeat_CL | summarize arg_max(TimeGenerated, *) by SourceComputerId "
        "| summarize Machines = count() by OSType, ComputerEnvironment | order by OSType asc"
    )
    _say("")
    _say(f"Log Analytics: {kql}")
    _say(table(stack.logs.query(kql), ["OSType", "ComputerEnvironment", "Machines"]))
