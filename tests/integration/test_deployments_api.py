"""Deployment definitions over the app's HTTP functions, stored in Azurite."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient
from azure.monitor.ingestion import LogsIngestionClient

import function_app
from local.arm.fleet import parse_fleet
from local.arm.server import ArmStandIn
from local.clock import VirtualClock
from local.functions_host import FunctionsHost
from local.loganalytics import LogAnalyticsStandIn
from local.tls import ensure_local_tls
from shared.azure.credentials import EmulatorCredential
from shared.deployments.definition import validate_definition
from shared.deployments.runs_table import RunState, RunStore
from shared.log_tables import HEARTBEAT
from shared.principal import Role, encode_principal
from shared.settings import load_settings
from tests.unit.test_deployment_definition import BAD_ID, linux, vm, windows

# The ten kinds the issue names (plus the ones it implies): (body change, field named in the 400).
TEN_INVALID = [
    ({"maintenanceWindowMinutes": 29}, "maintenanceWindowMinutes"),
    ({"maintenanceWindowMinutes": 361}, "maintenanceWindowMinutes"),
    ({"operatingSystem": "Linux", "kbNumbersToInclude": [], "kbNumbersToExclude": [],
      "classifications": ["FeaturePack"]}, "classifications"),
    ({"kbNumbersToInclude": ["KB12"]}, "kbNumbersToInclude"),
    ({"targets": {"machines": []}}, "targets"),
    ({"targets": {"machines": [BAD_ID]}}, "targets.machines"),
    ({"schedule": {"startTime": "2026-01-13T02:00:00", "timeZone": "Europe/Atlantis"}}, "schedule.timeZone"),
    ({"rollout": {"maxConcurrent": "150%"}}, "rollout.maxConcurrent"),
    ({"colour": "blue"}, "colour"),
    ({"name": "bad name!"}, "name"),
    ({"operatingSystem": "Linux", "kbNumbersToInclude": ["KB5034441"], "kbNumbersToExclude": [],
      "classifications": ["Other"]}, "kbNumbersToInclude"),
]


@pytest.fixture
def operator(app_settings) -> FunctionsHost:
    return FunctionsHost(function_app.app, signed_in_principal=encode_principal("olga", [Role.OPERATOR]))


def body_of(response) -> Any:
    return json.loads(response.get_body())


def unique(body: dict[str, Any]) -> dict[str, Any]:
    """Azurite is shared by the session: give each definition a name of its own."""
    return {**body, "name": f"{body['name']}-{uuid.uuid4().hex[:8]}"}


def count(host: FunctionsHost) -> int:
    response = host.request("GET", "/api/deployments")
    assert response.status_code == 200
    return int(body_of(response)["count"])


def test_create_read_edit_delete(operator):
    definition = unique(windows())
    created = operator.request("POST", "/api/deployments", body=definition)
    assert created.status_code == 201, created.get_body()
    assert created.headers["Location"] == f"/api/deployments/{definition['name']}"
    assert body_of(created)["kbNumbersToInclude"] == ["5034441", "890830"]

    shouting = {**definition, "name": definition["name"].upper()}
    duplicate = operator.request("POST", "/api/deployments", body=shouting)
    assert duplicate.status_code == 409 and body_of(duplicate)["error"]["field"] == "name"

    read = operator.request("GET", f"/api/deployments/{definition['name'].upper()}")
    assert read.status_code == 200 and body_of(read)["name"] == definition["name"]
    listed = body_of(operator.request("GET", "/api/deployments"))["deployments"]
    assert definition["name"] in [d["name"] for d in listed]

    edited = operator.request("PUT", f"/api/deployments/{definition['name']}",
                              body={**definition, "maintenanceWindowMinutes": 240})
    assert edited.status_code == 200 and body_of(edited)["maintenanceWindowMinutes"] == 240
    assert body_of(operator.request("GET", f"/api/deployments/{definition['name']}"))[
        "maintenanceWindowMinutes"] == 240

    stale = operator.request("PUT", f"/api/deployments/{definition['name']}",
                             body={**definition, "maintenanceWindowMinutes": 60},
                             headers={"If-Match": read.headers["ETag"]})
    assert stale.status_code == 412

    assert operator.request("DELETE", f"/api/deployments/{definition['name']}").status_code == 204
    assert operator.request("GET", f"/api/deployments/{definition['name']}").status_code == 404
    assert operator.request("DELETE", f"/api/deployments/{definition['name']}").status_code == 404


@pytest.mark.parametrize(("change", "field"), TEN_INVALID, ids=[f for _, f in TEN_INVALID])
def test_invalid_definitions_get_400_naming_the_field_and_store_nothing(operator, change, field):
    before = count(operator)
    response = operator.request("POST", "/api/deployments", body={**unique(windows()), **change})
    assert response.status_code == 400
    error = body_of(response)["error"]
    assert error["code"] == "InvalidField" and error["field"] == field
    assert count(operator) == before


def test_a_version_in_an_exclude_mask_is_refused_with_the_reason(operator):
    # Azure's Linux agent ignores an exclusion's version and excludes every version of the name.
    before = count(operator)
    body = {**unique(linux()), "packagesToExclude": ["openssl=3.0.2*"]}
    response = operator.request("POST", "/api/deployments", body=body)
    assert response.status_code == 400
    error = body_of(response)["error"]
    assert (error["code"], error["field"]) == ("InvalidField", "packagesToExclude")
    assert "excludes every version of 'openssl'" in error["message"]
    assert "packagesToInclude" in error["message"]  # says what to do instead
    assert count(operator) == before
    # The same mask is a version pin where Azure reads one: in packagesToInclude.
    assert validate_definition({**linux(), "packagesToInclude": ["openssl=3.0.2*"]})


def test_invalid_json_and_roles(app_settings):
    operator = FunctionsHost(function_app.app, signed_in_principal=encode_principal("o", [Role.OPERATOR]))
    response = operator.request("POST", "/api/deployments", body="{not json")
    assert response.status_code == 400 and body_of(response)["error"]["code"] == "InvalidJson"
    reader = FunctionsHost(function_app.app, signed_in_principal=encode_principal("r", [Role.READER]))
    assert reader.request("GET", "/api/deployments").status_code == 200
    assert reader.request("POST", "/api/deployments", body=unique(windows())).status_code == 403
    assert reader.request("DELETE", "/api/deployments/anything").status_code == 403


def test_put_cannot_rename(operator):
    definition = unique(windows())
    assert operator.request("POST", "/api/deployments", body=definition).status_code == 201
    renamed = operator.request("PUT", f"/api/deployments/{definition['name']}", body=unique(windows()))
    assert renamed.status_code == 400 and body_of(renamed)["error"]["field"] == "name"


def test_groups_evaluated_at_run_are_stored_without_members(operator):
    definition = unique(linux())
    definition["targets"] = {**definition["targets"], "evaluateGroupsAt": "run"}
    created = operator.request("POST", "/api/deployments", body=definition)
    assert created.status_code == 201
    assert body_of(created)["frozenGroupMembers"] is None


def test_frozen_groups_that_cannot_be_evaluated_store_nothing(operator):
    """ARM is unreachable here: a membership frozen from part of the fleet would be wrong, so refuse."""
    before = count(operator)
    definition = unique(linux())
    definition["targets"] = {"groups": [{"filter": {"tags": {"env": "prod"}}}]}
    response = operator.request("POST", "/api/deployments", body=definition)
    assert response.status_code == 502
    assert body_of(response)["error"]["code"] == "GroupEvaluationFailed"
    assert count(operator) == before


def test_openapi_document_describes_deployments(app_settings):
    host = FunctionsHost(function_app.app)
    response = host.request("GET", "/api/openapi.json")
    assert response.status_code == 200
    document = body_of(response)
    assert document["openapi"].startswith("3.1")
    assert {"post", "get"} <= set(document["paths"]["/api/deployments"])
    assert {"get", "put", "delete"} <= set(document["paths"]["/api/deployments/{name}"])
    schema = document["components"]["schemas"]["DeploymentDefinition"]
    assert "maintenanceWindowMinutes" in schema["properties"]
    assert "Schedule" in document["components"]["schemas"]
    # every route the app serves is described
    served = {f"/api/{e.route}" for e in host.functions.values() if e.trigger == "httpTrigger"}
    assert served <= set(document["paths"])


# --- saved-search groups through the real LogsQueryClient and the Log Analytics stand-in -------------

NOW = datetime(2026, 1, 13, 2, 0, tzinfo=UTC)
WORKSPACE = "00000000-0000-4000-8000-0000000000aa"
DCR = "dcr-00000000000000000000000000000aaa"


@pytest.fixture
def log_analytics(tmp_path, monkeypatch, app_settings) -> Iterator[LogAnalyticsStandIn]:
    tls = ensure_local_tls(tmp_path)
    with LogAnalyticsStandIn(None, tls, workspace_id=WORKSPACE, dcr_immutable_id=DCR, tables=(HEARTBEAT,),
                             clock=VirtualClock(NOW)) as server:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
        monkeypatch.setenv("LOGS_QUERY_ENDPOINT", server.base_url + "/v1")
        monkeypatch.setenv("LOG_ANALYTICS_WORKSPACE_ID", WORKSPACE)
        ca = str(tls.ca_file)
        with LogsIngestionClient(server.base_url, EmulatorCredential(), connection_verify=ca) as ingest:
            ingest.upload(DCR, HEARTBEAT.stream, [
                {"TimeGenerated": (NOW - timedelta(hours=1)).isoformat(), "Computer": name,
                 "ResourceId": vm(name).resource_id, "OSType": os_type}
                for name, os_type in (("web01", "Linux"), ("web02", "Linux"), ("app01", "Windows"))
            ])
        yield server


def test_saved_search_membership_is_frozen_at_creation(operator, log_analytics):
    definition = unique(linux())
    query = "Heartbeat_CL | where OSType == 'Linux' | distinct ResourceId | order by ResourceId asc"
    definition["targets"] = {"groups": [{"savedSearch": {"query": query}}]}
    created = operator.request("POST", "/api/deployments", body=definition)
    assert created.status_code == 201, created.get_body()
    assert body_of(created)["frozenGroupMembers"] == [vm("web01").resource_id, vm("web02").resource_id]

    without_ids = {**definition, "name": definition["name"] + "-2",
                   "targets": {"groups": [{"savedSearch": {"query": "Heartbeat_CL | distinct Computer"}}]}}
    refused = operator.request("POST", "/api/deployments", body=without_ids)
    assert refused.status_code == 502 and "ResourceId" in body_of(refused)["error"]["message"]


# --- dynamic-filter groups through the real compute clients and the ARM stand-in --------------------

ARM_SUB = "11111111-1111-4111-8111-111111111111"


def _arm_vm(name: str, os_type: str, group: str, env: str) -> dict[str, Any]:
    return {"subscription": ARM_SUB, "resourceGroup": group, "name": name, "kind": "azure-vm",
            "osType": os_type, "osName": "ubuntu" if os_type == "Linux" else "Windows Server 2022",
            "osVersion": "22.04" if os_type == "Linux" else "10.0.20348", "location": "westeurope",
            "availableUpdates": [], "tags": {"env": env}}


@pytest.fixture
def arm(tmp_path, monkeypatch, app_settings) -> Iterator[ArmStandIn]:
    tls = ensure_local_tls(tmp_path)
    fleet = parse_fleet({"subscriptions": [{"id": ARM_SUB}], "machines": [
        _arm_vm("web-01", "Linux", "rg-app", "prod"),
        _arm_vm("web-02", "Linux", "rg-app", "dev"),
        _arm_vm("win-01", "Windows", "rg-app", "prod"),
        _arm_vm("db-01", "Linux", "rg-data", "prod"),
    ]})
    with ArmStandIn(fleet, VirtualClock(NOW), tls, auto_advance=True) as server:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
        monkeypatch.setenv("ARM_ENDPOINT", server.base_url)
        monkeypatch.setenv("TARGET_SUBSCRIPTION_IDS", ARM_SUB)
        yield server


def test_filter_membership_is_frozen_at_creation_and_kept_by_an_edit(operator, arm, monkeypatch):
    definition = unique(linux())
    definition["targets"] = {"groups": [{"filter": {"resourceGroups": ["rg-app"], "tags": {"env": "prod"}}}]}
    created = operator.request("POST", "/api/deployments", body=definition)
    assert created.status_code == 201, created.get_body()
    # win-01 matches the filter but is Windows; web-02 is dev; db-01 is in another group
    assert [m.rsplit("/", 1)[1] for m in body_of(created)["frozenGroupMembers"]] == ["web-01"]
    # With ARM gone, an edit that keeps the targets still succeeds: the frozen membership is kept,
    # not re-evaluated; one that changes the targets must evaluate again and fails.
    monkeypatch.setenv("ARM_ENDPOINT", "https://127.0.0.1:9")
    retargeted = {**definition, "targets": {"groups": [{"filter": {"resourceGroups": ["rg-data"]}}]}}
    path = f"/api/deployments/{definition['name']}"
    assert operator.request("PUT", path, body=retargeted).status_code == 502
    edited = operator.request("PUT", f"/api/deployments/{definition['name']}",
                              body={**definition, "maintenanceWindowMinutes": 45})
    assert edited.status_code == 200
    assert body_of(edited)["frozenGroupMembers"] == body_of(created)["frozenGroupMembers"]


def test_a_deployment_shows_its_next_run_and_its_last_run(operator, app_settings):
    definition = unique(windows()) | {
        "schedule": {"startTime": "2026-01-13T02:00:00", "timeZone": "UTC",
                     "recurrence": {"frequency": "Day", "interval": 1}},
    }  # fmt: skip
    created = body_of(operator.request("POST", "/api/deployments", body=definition))
    now = datetime.now(UTC)
    today = now.replace(hour=2, minute=0, second=0, microsecond=0)
    expected = today if now < today else today + timedelta(days=1)
    assert datetime.fromisoformat(created["nextRun"]) == expected
    assert created["lastRun"] is None and created["runs"] == f"/api/deployments/{definition['name']}/runs"

    runs = RunStore(TableServiceClient.from_connection_string(load_settings().storage_connection_string))
    runs.ensure()
    stored = validate_definition(definition)
    runs.create_run(f"deploy-{definition['name']}-20260114T0200Z", stored, "schedule", now,
                    occurrence=datetime(2026, 1, 14, 2, 0, tzinfo=UTC), state=RunState.MISSED,
                    reason="timer down")
    read = body_of(operator.request("GET", f"/api/deployments/{definition['name']}"))
    assert read["lastRun"]["state"] == "missed" and read["lastRun"]["stopReason"] == "timer down"
    assert read["lastRun"]["link"] == f"/api/deployment-runs/deploy-{definition['name']}-20260114T0200Z"
    listed = {d["name"]: d for d in body_of(operator.request("GET", "/api/deployments"))["deployments"]}
    assert listed[definition["name"]]["lastRun"]["state"] == "missed"


# --- definitions that cannot work (issue 11, part 7) -----------------------------------------------

MONTH_END = {"startTime": "2027-01-01T02:00:00", "timeZone": "UTC",
             "recurrence": {"frequency": "Month", "monthDays": [31]}}


@pytest.mark.parametrize(("change", "field"), [
    ({"packagesToExclude": ["*"]}, "packagesToExclude"),
    ({"schedule": {"startTime": "2026-02-01T22:00:00", "timeZone": "UTC"}}, "schedule.startTime"),
    ({"targets": {"machines": [vm("web01").resource_id.replace("0000000000aa", "0000000000bb")]}},
     "targets.machines.0"),
])
def test_definitions_that_cannot_work_are_refused_and_nothing_is_stored(operator, change, field):
    before = count(operator)
    body = unique(linux()) | {"targets": {"machines": [vm("web01").resource_id]}} | change
    response = operator.request("POST", "/api/deployments", body=body)
    assert response.status_code == 400, response.get_body()
    assert body_of(response)["error"]["field"] == field
    assert count(operator) == before


def test_a_month_day_some_months_lack_is_stored_with_a_warning_and_last_day_silences_it(operator):
    body = unique(linux()) | {"targets": {"machines": [vm("web01").resource_id]}, "schedule": MONTH_END}
    created = operator.request("POST", "/api/deployments", body=body)
    assert created.status_code == 201, created.get_body()
    [warning] = body_of(created)["warnings"]
    assert "February, April, June, September and November" in warning
    assert "warnings" not in body_of(operator.request("GET", f"/api/deployments/{body['name']}"))

    last_day = {**MONTH_END, "recurrence": {**MONTH_END["recurrence"], "ifMissing": "lastDay"}}
    edited = operator.request("PUT", f"/api/deployments/{body['name']}", body=body | {"schedule": last_day})
    assert edited.status_code == 200, edited.get_body()
    assert body_of(edited)["warnings"] == []
    assert body_of(edited)["schedule"]["recurrence"]["ifMissing"] == "lastDay"
