"""The Resource Graph stand-in over HTTPS, queried through azure-mgmt-resourcegraph and the product's
adapter (``shared/azure/resource_graph.py``): paging, subscriptions, the quota and its 429, errors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.mgmt.resourcegraph import ResourceGraphClient
from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions

from local.arm.catalogue import updates_for
from local.arm.fleet import parse_fleet
from local.arm.simulation import InstallOutcome, Simulation
from local.clock import VirtualClock
from local.resourcegraph import ResourceGraphStandIn
from local.tls import LocalTls
from shared.azure.credentials import EmulatorCredential
from shared.azure.resource_graph import (
    GROUP_SIZE,
    PAGE_SIZE,
    QuotaGate,
    ResourceGraph,
    ResourceGraphError,
    fleet_patch_activity,
    installation_patches,
    installation_run,
    installation_runs,
    latest_assessment_patches,
    resource_graph,
)
from shared.model.install_outcome import InstallationState

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"
SUB = "11111111-1111-4111-8111-111111111111"
OTHER = "33333333-3333-4333-8333-333333333333"
NOW = datetime(2026, 2, 11, 6, 0, tzinfo=UTC)
ROWS = 2 * PAGE_SIZE + 500  # three pages
# The quota of the tests that wait it out: short, so that they take about a second.
QUICK_QUERIES, QUICK_WINDOW = 3, 1.0


class Token:
    """A caller: the stand-in keys its quota by the bearer token, as Resource Graph keys it by user."""

    def __init__(self, token: str = "test-user") -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)



def _vm_rows(subscription: str, count: int) -> list[dict[str, Any]]:
    base = f"/subscriptions/{subscription}/resourceGroups/rg-bulk/providers/Microsoft.Compute/virtualMachines"
    return [
        {"id": f"{base}/vm-{i:05d}", "name": f"vm-{i:05d}", "type": "Microsoft.Compute/virtualMachines",
         "subscriptionId": subscription, "resourceGroup": "rg-bulk", "properties": {"n": i}}
        for i in range(count)
    ]  # fmt: skip


def _standin(tls: LocalTls, **quota: Any) -> ResourceGraphStandIn:
    standin = ResourceGraphStandIn(tls, clock=VirtualClock(NOW), **quota)
    standin.store.put_resources(_vm_rows(SUB, ROWS) + _vm_rows(OTHER, 7))
    return standin


@pytest.fixture
def standin(tls: LocalTls) -> Iterator[ResourceGraphStandIn]:
    with _standin(tls) as running:
        yield running


@pytest.fixture
def quick(tls: LocalTls) -> Iterator[ResourceGraphStandIn]:
    with _standin(tls, quota_queries=QUICK_QUERIES, quota_window_seconds=QUICK_WINDOW) as running:
        yield running


def _client(standin: ResourceGraphStandIn, tls: LocalTls, token: str = "test-user", **options: Any) -> Any:
    return ResourceGraphClient(
        Token(token), base_url=standin.base_url, credential_scopes=[standin.base_url + "/.default"],
        connection_verify=str(tls.ca_file), **options,
    )  # fmt: skip


def _graph(standin: ResourceGraphStandIn, tls: LocalTls, token: str = "test-user") -> ResourceGraph:
    return ResourceGraph(_client(standin, tls, token, retry_backoff_factor=0.05), QuotaGate())


# -- paging and scope ----------------------------------------------------------------------------------


def test_every_page_is_read_through_the_skip_token(standin, tls):
    graph = _graph(standin, tls)
    rows = list(graph.rows("resources | project id, name, n = toint(properties.n) | order by id asc", [SUB]))
    assert [r["n"] for r in rows] == list(range(ROWS))
    assert standin.counters.queries == 3 and standin.counters.pages_with_token == 2


def test_a_page_has_the_documented_envelope_and_at_most_1000_rows(standin, tls):
    client = _client(standin, tls)
    options = QueryRequestOptions(top=PAGE_SIZE, result_format="objectArray")
    page = client.resources(QueryRequest(subscriptions=[SUB], query="resources | project id, properties",
                                         options=options))  # fmt: skip
    assert (page.total_records, page.count, page.result_truncated) == (ROWS, PAGE_SIZE, "false")
    assert page.skip_token and page.facets == []
    assert page.data[0]["properties"] == {"n": 0}  # dynamic values as JSON, not text
    table = client.resources(QueryRequest(subscriptions=[OTHER], query="resources | project id, name",
                                          options=QueryRequestOptions(result_format="table")))  # fmt: skip
    assert [c["name"] for c in table.data["columns"]] == ["id", "name"] and len(table.data["rows"]) == 7
    with pytest.raises(HttpResponseError, match=r"\$top must be a whole number from 1 to 1000"):
        too_many = QueryRequestOptions(top=PAGE_SIZE + 1)
        client.resources(QueryRequest(subscriptions=[SUB], query="resources", options=too_many))


def test_a_result_without_ids_cannot_be_paged_and_is_not_taken_for_whole(standin, tls):
    cut = f"returned {PAGE_SIZE} of {ROWS} rows .* project the id column"
    with pytest.raises(ResourceGraphError, match=cut):
        list(_graph(standin, tls).rows("resources | project name", [SUB]))


def test_only_the_subscriptions_asked_for_answer(standin, tls):
    graph = _graph(standin, tls)
    assert [r["Count"] for r in graph.rows("resources | count", [OTHER])] == [7]
    assert [r["Count"] for r in graph.rows("resources | count", [OTHER, SUB.upper()])] == [ROWS + 7]
    names = {r["subscriptionId"] for r in graph.rows("resources | project id, subscriptionId", [OTHER])}
    assert names == {OTHER}


# -- the quota -----------------------------------------------------------------------------------------


def test_a_burst_past_15_queries_in_5_seconds_is_answered_429_with_the_quota_headers(standin, tls):
    client = _client(standin, tls, retry_total=0)
    remaining: list[str] = []

    def hook(response: Any) -> None:
        remaining.append(response.http_response.headers["x-ms-user-quota-remaining"])

    options = QueryRequestOptions(result_format="objectArray")
    request = QueryRequest(subscriptions=[OTHER], query="resources | count", options=options)
    for _ in range(15):
        client.resources(request, raw_response_hook=hook)
    assert remaining == [str(n) for n in range(14, -1, -1)]
    with pytest.raises(HttpResponseError) as caught:
        client.resources(request)
    response = caught.value.response
    assert response is not None and response.status_code == 429
    assert response.headers["x-ms-user-quota-remaining"] == "0"
    assert response.headers["x-ms-user-quota-resets-after"] in ("00:00:05", "00:00:04", "00:00:03")
    body = json.loads(response.text())
    expected = json.loads((FIXTURES / "resource_graph_errors.json").read_text())["throttled"]["body"]
    assert body["error"]["code"] == expected["error"]["code"] == "RateLimiting"
    assert body["error"]["details"] == expected["error"]["details"]
    assert body["error"]["message"].startswith("Please provide below info when asking for support: ")
    # Another user has a quota of their own.
    assert _client(standin, tls, "another-user").resources(request).data == [{"Count": 7}]
    assert standin.counters.throttled == 1


def test_the_adapter_waits_for_the_quota_instead_of_being_throttled(quick, tls):
    graph = _graph(quick, tls)
    started = time.monotonic()
    for _ in range(QUICK_QUERIES * 2 + 1):
        assert list(graph.rows("resources | count", [OTHER])) == [{"Count": 7}]
    assert time.monotonic() - started >= 2 * QUICK_WINDOW * 0.9  # two windows waited out
    assert quick.counters.throttled == 0


def test_a_429_is_waited_out_and_resent(quick, tls):
    """Two clients of one identity (two workers): the second learns of the spent quota from a 429."""
    first, second = _graph(quick, tls), _graph(quick, tls)
    for _ in range(QUICK_QUERIES):
        list(first.rows("resources | count", [OTHER]))
    assert list(second.rows("resources | count", [OTHER])) == [{"Count": 7}]
    assert quick.counters.throttled >= 1
    assert quick.counters.queries == QUICK_QUERIES + 1


# -- errors ----------------------------------------------------------------------------------------------


def test_a_query_the_engine_refuses_is_a_clear_permanent_error(standin, tls):
    with pytest.raises(ResourceGraphError) as caught:
        list(_graph(standin, tls).rows("resources | where (", [SUB]))
    error = caught.value
    assert not error.transient and error.status == 400 and error.code == "BadRequest"
    assert "InvalidQuery: Query is invalid" in str(error)
    assert "ParserFailure: could not parse KQL" in str(error)
    with pytest.raises(ResourceGraphError, match=r"InvalidQuery: .*unsupported KQL construct"):
        list(_graph(standin, tls).rows("resources | project x = bag_keys(properties)", [SUB]))
    expected = json.loads((FIXTURES / "resource_graph_errors.json").read_text())["invalidQuery"]["body"]
    assert error.code == expected["error"]["code"]
    first = expected["error"]["details"][0]  # the generic reason Resource Graph gives first
    assert f"{first['code']}: {first['message']}" in str(error)


def test_requests_outside_the_contract_are_refused(standin, tls):
    url = standin.base_url + "/providers/Microsoft.ResourceGraph/resources"
    body = json.dumps({"subscriptions": [SUB], "query": "resources | count"})
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}

    def post(target: str, sent: dict[str, str] = headers) -> requests.Response:
        return requests.post(target, data=body, headers=sent, verify=str(tls.ca_file), timeout=10)

    assert post(url + "?api-version=2021-03-01", {"Content-Type": "application/json"}).status_code == 401
    assert post(url).json()["error"]["code"] == "MissingApiVersionParameter"
    assert post(url + "?api-version=2019-04-01").json()["error"]["code"] == "InvalidApiVersionParameter"
    plain = dict(headers, **{"Content-Type": "text/plain"})
    assert post(url + "?api-version=2021-03-01", plain).status_code == 500  # as documented
    answer = post(url + "?api-version=2021-03-01")  # no options: the table format
    assert answer.status_code == 200
    assert answer.json()["data"] == {"columns": [{"name": "Count", "type": "integer"}], "rows": [[ROWS]]}
    assert set(answer.json()) == {"totalRecords", "count", "resultTruncated", "data", "facets"}


# -- the product's queries over what the simulation did --------------------------------------------------


def test_the_products_queries_read_what_the_simulation_left(standin, tls, monkeypatch):
    """A Windows VM and an Ubuntu Arc server assessed and patched; read back through the process's
    shared client, as the functions will."""
    def machine(name: str, kind: str, os: tuple[str, str, str], updates: list[str]) -> dict[str, Any]:
        return {
            "subscription": SUB, "resourceGroup": "rg-app", "name": name, "kind": kind, "osType": os[0],
            "osName": os[1], "osVersion": os[2], "location": "westeurope", "availableUpdates": updates,
        }  # fmt: skip

    fleet = parse_fleet({"subscriptions": [{"id": SUB}], "machines": [
        machine("win-01", "azure-vm", ("Windows", "Windows Server 2019 Datacenter", "10.0.17763.5329"),
                ["KB5034768", "KB2267602"]),
        machine("ubu-arc-01", "arc-server", ("Linux", "ubuntu", "22.04"), ["openssl", "tzdata"]),
    ]})  # fmt: skip
    simulation = Simulation(fleet, VirtualClock(NOW))
    states = [simulation.machine(m.resource_id) for m in fleet.machines]
    for state in states:
        standin.feed.assessment_finished(state, f"assess-{state.spec.name}", NOW - timedelta(hours=2), NOW)
    arc = states[1]
    openssl, tzdata = arc.available
    outcome = InstallOutcome([(openssl, "Installed"), (tzdata, "Pending")], timedelta(minutes=9), True,
                             "NotNeeded", False)  # fmt: skip
    standin.feed.installation_finished(arc, outcome, "run-7", NOW, NOW + timedelta(minutes=9))

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))  # what the local stack sets for the app
    graph = resource_graph(EmulatorCredential(), standin.base_url)
    patches = latest_assessment_patches(graph, [s.spec.resource_id for s in states])
    by_machine = {(p.machine_id, p.patch.kb_id or p.patch.name) for p in patches}
    assert by_machine == {
        (states[0].spec.resource_id, "5034768"), (states[0].spec.resource_id, "2267602"),
        (arc.spec.resource_id, "openssl"), (arc.spec.resource_id, "tzdata"),
    }  # an Arc server's patches too, which its own assessPatches result lacks
    installed = installation_patches(graph, arc.spec.resource_id, "run-7")
    assert [(p.patch.name, p.patch.state) for p in installed] == [
        ("openssl", InstallationState.INSTALLED), ("tzdata", InstallationState.PENDING),
    ]
    activity = fleet_patch_activity(graph, [SUB])
    arc_activity = activity[arc.spec.resource_id.lower()]
    assert arc_activity.installation is not None
    assert (arc_activity.installation.installation_id, arc_activity.installation.status) == (
        "run-7", "CompletedWithWarnings")
    assert arc_activity.assessment is not None and arc_activity.assessment.at == NOW
    assert activity[states[0].spec.resource_id.lower()].installation is None
    assert fleet_patch_activity(graph, [SUB], since=NOW + timedelta(minutes=1)).keys() == {
        arc.spec.resource_id.lower()
    }


def test_a_batchs_install_results_are_one_query_per_100_machines_paged_through_the_skip_token(standin, tls):
    """What a deployment batch's end asks (``installation_runs``): the runs of GROUP_SIZE Arc servers by
    ``in~`` over the runs' ids, 12 rows a run (summary and 11 updates), so the answer spans two pages; a
    machine past the group is a second query; each run is answered as one query for it would answer."""
    updates = [u.name for u in updates_for("ubuntu-22.04")]
    fleet = parse_fleet({"subscriptions": [{"id": SUB}], "machines": [
        {"subscription": SUB, "resourceGroup": "rg-arc", "name": f"arc-{n:03d}", "kind": "arc-server",
         "osType": "Linux", "osName": "ubuntu", "osVersion": "22.04", "location": "westeurope",
         "availableUpdates": updates}
        for n in range(GROUP_SIZE + 1)
    ]})  # fmt: skip
    simulation = Simulation(fleet, VirtualClock(NOW))
    runs = []
    for n, machine in enumerate(fleet.machines):
        state = simulation.machine(machine.resource_id)
        states = [(u, "Failed" if (n, i) == (7, 0) else "Installed") for i, u in enumerate(state.available)]
        outcome = InstallOutcome(states, timedelta(minutes=30), n != 7, "NotNeeded", False)
        standin.feed.installation_finished(state, outcome, f"run-{n:03d}", NOW, NOW + timedelta(minutes=30))
        runs.append((machine.resource_id, f"RUN-{n:03d}"))  # the activity id in another case
    assert all(len(simulation.machine(m).available) == 11 for m, _ in runs)

    found = installation_runs(_graph(standin, tls), runs)

    counters = standin.counters
    assert (counters.queries, counters.pages_with_token, counters.throttled) == (3, 1, 0)
    assert len(found) == GROUP_SIZE + 1
    for n, (machine, run) in enumerate(runs):
        result = found[(machine.lower(), run.lower())]
        assert result.summary is not None and len(result.patches) == 11
        failed = [p.patch.name for p in result.patches if p.patch.state is InstallationState.FAILED]
        assert failed == ([simulation.machine(machine).available[0].name] if n == 7 else [])
    one = installation_run(_graph(standin, tls), runs[7][0], runs[7][1])
    assert found[(runs[7][0].lower(), "run-007")] == one
