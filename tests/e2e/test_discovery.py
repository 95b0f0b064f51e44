"""Fleet discovery end to end: timer -> orchestration -> activities -> ARM, Table Storage, Log Analytics."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter

import pytest

from local.arm.fleet import load_fleet
from local.stack import DEMO_FLEET, LocalStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack():
    with LocalStack(load_fleet(DEMO_FLEET)).start() as running:
        yield running


def _discovery_runs(stack):
    return [i for i in stack.durable.list_instances() if i["instanceId"].startswith("discovery-")]


def test_timer_discovers_the_whole_fleet_once(stack):
    stack.functions.fire_timer("discover_fleet")
    stack.functions.fire_timer("discover_fleet", past_due=True)  # a doubled firing of the same slot
    runs = _discovery_runs(stack)
    assert len(runs) == 1
    final = stack.durable.wait_for_completion(runs[0]["instanceId"], timeout=60)
    assert final["runtimeStatus"] == "Completed"
    fleet = stack.fleet
    assert final["output"]["machines"] == len(fleet.machines)
    assert final["customStatus"]["stage"] == "done"

    body = json.loads(stack.functions.request("GET", "/api/machines").get_body())
    assert body["count"] == len(fleet.machines)
    by_os = Counter(m["osType"] for m in body["machines"])
    assert by_os == Counter(final["output"]["by_os"])
    deallocated = [m for m in body["machines"] if m["powerState"] == "deallocated"]
    assert deallocated and all("deallocated" in m["notReachableReason"] for m in deallocated)
    assert any(m["support"] == "unsupported" for m in body["machines"])
    assert any(m["support"] == "assessment-only" for m in body["machines"])
    assert {m["environment"] for m in body["machines"]} == {"Azure", "Non-Azure"}

    rows = stack.logs.query("Heartbeat_CL | summarize n = dcount(SourceComputerId)")
    assert rows[0]["n"] == len(fleet.machines)
    linux = stack.logs.query(
        'Heartbeat_CL | where OSType == "Linux" | summarize arg_max(TimeGenerated, *) by SourceComputerId'
    )
    assert len(linux) == by_os["Linux"]


def test_on_demand_discovery_over_http_reports_progress_and_result(stack):
    started = stack.functions.request("POST", "/api/discoveries", body={})
    assert started.status_code == 202
    run_id = json.loads(started.get_body())["runId"]
    stack.durable.wait_for_completion(run_id, timeout=60)
    status = json.loads(stack.functions.request("GET", f"/api/runs/{run_id}").get_body())
    assert status["status"] == "Completed"
    assert status["result"]["machines"] == len(stack.fleet.machines)
    assert "statusQueryGetUri" not in json.dumps(status)  # never the Durable system URLs


def test_the_api_served_over_http_starts_and_reports_a_run(stack):
    base = stack.functions.serve()
    try:
        request = urllib.request.Request(f"{base}/api/discoveries", data=b"{}", method="POST")
        with urllib.request.urlopen(request) as response:
            assert response.status == 202
            location = response.headers["Location"]
            run_id = json.loads(response.read())["runId"]
        assert location == f"/api/runs/{run_id}"
        stack.durable.wait_for_completion(run_id, timeout=60)
        with urllib.request.urlopen(base + location) as response:
            assert json.loads(response.read())["status"] == "Completed"
    finally:
        stack.functions.stop()


def test_bad_discovery_requests_name_the_field(stack):
    body = {"subscriptionIds": ["x"], "extra": 1}
    response = stack.functions.request("POST", "/api/discoveries", body=body)
    assert response.status_code == 400
    assert json.loads(response.get_body())["error"]["field"] == "extra"
    outside = stack.functions.request(
        "POST", "/api/discoveries", body={"subscriptionIds": ["99999999-9999-9999-9999-999999999999"]}
    )
    assert outside.status_code == 400
    assert json.loads(outside.get_body())["error"]["field"] == "subscriptionIds"
