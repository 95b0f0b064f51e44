"""The Functions runner calls the real app's HTTP functions, in process and over HTTP."""

import json
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime

import pytest
from azure.data.tables import TableServiceClient

import function_app
from local.functions_host import FunctionsHost
from shared.fleet.machines_table import MachineInventory
from shared.model.machines import Machine, MachineKind, OsType, PowerState
from shared.principal import Role, encode_principal
from tests.integration.conftest import SUBSCRIPTION


@pytest.fixture
def reader():
    return {"X-MS-CLIENT-PRINCIPAL": encode_principal("rita", [Role.READER])}


def test_functions_are_indexed_from_the_app_metadata():
    host = FunctionsHost(function_app.app)
    assert host.timers() == [
        "apply_approval_rules", "assess_linux_fleet", "assess_windows_fleet", "audit_daily_compliance",
        "clean_rollback_points",
        "discover_fleet",
        "evaluate_test_evidence", "light_check",
        "reconcile_deployment_runs", "schedule_deployments", "send_log_outbox",
        "send_notifications",
    ]
    assert host.functions["read_run"].route == "runs/{runId}"
    assert host.functions["start_discovery"].client_binding == "client"


def test_health_names_bad_settings(monkeypatch, app_settings):
    host = FunctionsHost(function_app.app)
    assert host.request("GET", "/api/health").status_code == 200
    monkeypatch.setenv("LOGS_DCR_IMMUTABLE_ID", "nope")
    response = host.request("GET", "/api/health")
    assert response.status_code == 503
    assert "LOGS_DCR_IMMUTABLE_ID" in json.loads(response.get_body())["problems"][0]


# A client binding that points nowhere: enough for functions that refuse before using the client.
UNREACHABLE_DURABLE = json.dumps({
    "taskHubName": "TestHub", "creationUrls": {}, "managementUrls": {}, "rpcBaseUrl": "http://127.0.0.1:9/",
})


def test_routing_errors_and_roles(app_settings, reader):
    host = FunctionsHost(function_app.app, lambda: UNREACHABLE_DURABLE)
    assert host.request("GET", "/api/machines").status_code == 401
    operator_only = host.request("POST", "/api/discoveries", headers=reader)
    assert operator_only.status_code == 403
    assert host.request("DELETE", "/api/machines", headers=reader).status_code == 405
    assert host.request("GET", "/api/nothing-here").status_code == 404
    bad_filter = host.request("GET", "/api/machines?colour=blue", headers=reader)
    assert bad_filter.status_code == 400
    assert json.loads(bad_filter.get_body())["error"]["field"] == "colour"


def test_machines_are_served_over_http_from_the_inventory(app_settings, reader, azurite):
    inventory = MachineInventory(TableServiceClient.from_connection_string(azurite.connection_string))
    inventory.ensure()
    suite = uuid.uuid4().hex  # other tests share this Azurite: a tag of our own tells our machines apart
    machines = [
        Machine(
            f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{n}",
            n, f"{n}.contoso.com", MachineKind.AZURE_VM, SUBSCRIPTION, "rg", "westeurope", os_type, os_name,
            version, PowerState.RUNNING, "Manual", {"env": "prod", "suite": suite},
        )
        for n, os_type, os_name, version in [
            ("web01", OsType.LINUX, "Ubuntu", "22.04"),
            ("app01", OsType.WINDOWS, "Windows Server 2022 Datacenter", "10.0.20348"),
        ]
    ]
    inventory.record(machines, datetime(2026, 1, 1, tzinfo=UTC))
    # Page through everything two at a time; every machine comes back exactly once.
    reader_host = FunctionsHost(function_app.app, signed_in_principal=encode_principal("r", [Role.READER]))
    seen, token, pages = [], None, 0
    while True:
        path = "/api/machines?pageSize=1" + (f"&nextToken={token}" if token else "")
        body = json.loads(reader_host.request("GET", path).get_body())
        seen += [m["resourceId"] for m in body["machines"]]
        pages += 1
        token = body["nextToken"]
        if not token:
            break
    # (other tests may share this Azurite's Machines table: ours must each appear once)
    assert len(seen) == len(set(seen)) and pages >= 2
    assert {m.resource_id for m in machines} <= set(seen)
    host = FunctionsHost(function_app.app, signed_in_principal=encode_principal("local", [Role.READER]))
    base = host.serve()
    try:
        with urllib.request.urlopen(f"{base}/api/machines?os=linux&tag=suite:{suite}") as response:
            body = json.loads(response.read())
        assert [m["computerName"] for m in body["machines"]] == ["web01.contoso.com"]
        assert body["machines"][0]["tags"] == {"env": "prod", "suite": suite}
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{base}/api/machines?os=linux&colour=blue")
        assert caught.value.code == 400
        assert "colour" in json.loads(caught.value.read())["error"]["message"]
    finally:
        host.stop()


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
def test_head_and_options_get_the_bare_404_of_the_functions_host(app_settings, method):
    # No function declares HEAD or OPTIONS; the Functions host's router answers such a request with an
    # empty 404 before any function runs (Azure/azure-functions-host#11625), and no CORS is configured.
    host = FunctionsHost(function_app.app, signed_in_principal=encode_principal("olga", [Role.OPERATOR]))
    base = host.serve()
    try:
        for path in ("/api/health", "/api/machines", "/api/deployments/any"):
            request = urllib.request.Request(f"{base}{path}", method=method)
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request)
            assert caught.value.code == 404, (method, path)
            assert caught.value.read() == b""
    finally:
        host.stop()
    assert host.request("GET", "/api/health").status_code == 200  # the route itself is served
