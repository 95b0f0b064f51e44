"""A first hour without friction (issue 15) over the app's HTTP functions, with Azurite: a machine by any
of its names, every invalid field in one 400, Windows time-zone names, inline runs without a schedule."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
from azure.data.tables import TableServiceClient

import function_app
from local.clock import VirtualClock
from local.durable import DurableRunner
from local.functions_host import FunctionsHost
from shared.fleet.machines_table import MachineInventory
from shared.model.machines import Machine, MachineKind, OsType, PowerState
from shared.principal import Role, encode_principal
from tests.integration.conftest import SUBSCRIPTION
from tests.unit.test_deployment_definition import windows

OTHER_SUBSCRIPTION = "00000000-0000-0000-0000-0000000000bb"  # not in TARGET_SUBSCRIPTION_IDS
AT = datetime(2026, 1, 12, 3, 0, tzinfo=UTC)


def body_of(response) -> Any:
    return json.loads(response.get_body())


def machine(name: str, computer: str, group: str = "rg", subscription: str = SUBSCRIPTION) -> Machine:
    return Machine(
        f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{name}",
        name, computer, MachineKind.AZURE_VM, subscription, group, "westeurope", OsType.WINDOWS,
        "Windows Server 2022 Datacenter", "10.0.20348", PowerState.RUNNING, "AutomaticByPlatform",
    )


@pytest.fixture
def reader(app_settings) -> FunctionsHost:
    return FunctionsHost(function_app.app, signed_in_principal=encode_principal("rita", [Role.READER]))


@pytest.fixture
def operator(app_settings) -> FunctionsHost:
    return FunctionsHost(function_app.app, signed_in_principal=encode_principal("olga", [Role.OPERATOR]))


@pytest.fixture
def fleet(app_settings) -> dict[str, Machine]:
    """Machines of their own (Azurite is shared by the session): one named uniquely, two sharing a
    computer name, one in a subscription the app does not manage."""
    tag = uuid.uuid4().hex[:6]
    machines = {
        "sql": machine(f"vm-sql-{tag}", f"SQL-PROD-{tag}"),
        "twin-a": machine(f"vm-twin-a-{tag}", f"twin-{tag}", group="rg-a"),
        "twin-b": machine(f"vm-twin-b-{tag}", f"twin-{tag}", group="rg-b"),
        "elsewhere": machine(f"vm-else-{tag}", f"else-{tag}", subscription=OTHER_SUBSCRIPTION),
    }
    service = TableServiceClient.from_connection_string(app_settings["STORAGE_CONNECTION_STRING"])
    inventory = MachineInventory(service)
    inventory.ensure()
    inventory.record(machines.values(), AT)
    return machines


# --- a machine by any of its names -------------------------------------------------------------------


def test_a_machine_answers_to_its_key_resource_id_and_computer_name_in_any_case(reader, fleet):
    sql = fleet["sql"]
    names = [sql.key, quote(sql.resource_id, safe=""), sql.computer_name, sql.computer_name.lower(),
             sql.name.upper()]  # the resource name too, when no computer name matches
    for name in names:
        response = reader.request("GET", f"/api/machines/{name}")
        assert response.status_code == 200, (name, response.get_body())
        detail = body_of(response)
        assert (detail["id"], detail["computerName"]) == (sql.key, sql.computer_name), name


def test_a_computer_name_two_machines_share_is_a_409_listing_both(reader, fleet):
    response = reader.request("GET", f"/api/machines/{fleet['twin-a'].computer_name.upper()}")
    assert response.status_code == 409, response.get_body()
    error = body_of(response)["error"]
    assert error["code"] == "MachineNameNotUnique"
    assert {c["id"] for c in error["candidates"]} == {fleet["twin-a"].key, fleet["twin-b"].key}
    assert fleet["twin-a"].resource_id in error["message"] and fleet["twin-b"].resource_id in error["message"]
    # Either of them by its key or resource id is still one machine.
    assert reader.request("GET", f"/api/machines/{fleet['twin-b'].key}").status_code == 200


def test_an_unknown_machine_is_a_404_naming_what_was_looked_for(reader, fleet):
    response = reader.request("GET", "/api/machines/NO-SUCH-HOST")
    assert response.status_code == 404
    error = body_of(response)["error"]
    assert error["code"] == "MachineNotFound"
    assert "'NO-SUCH-HOST'" in error["message"] and "computer name" in error["message"]
    gone = quote(machine("vm-gone", "gone").resource_id, safe="")
    assert reader.request("GET", f"/api/machines/{gone}").status_code == 404


def test_a_key_outside_the_managed_subscriptions_is_still_found(reader, fleet):
    # The point reads look in the managed subscriptions; the one query for names also matches keys.
    response = reader.request("GET", f"/api/machines/{fleet['elsewhere'].key}")
    assert response.status_code == 200, response.get_body()
    assert body_of(response)["computerName"] == fleet["elsewhere"].computer_name


# --- every invalid field at once --------------------------------------------------------------------


def test_a_400_lists_every_invalid_field_with_its_rule(operator):
    body = {**windows(), "name": "bad name!", "maintenanceWindowMinutes": 10, "colour": "blue",
            "schedule": {"startTime": "2027-01-12T02:00:00", "timeZone": "Mars/Olympus"}}
    response = operator.request("POST", "/api/deployments", body=body)
    assert response.status_code == 400, response.get_body()
    error = body_of(response)["error"]
    fields = [d["field"] for d in error["details"]]
    assert set(fields) == {"name", "maintenanceWindowMinutes", "colour", "schedule.timeZone"}
    # The first stays where clients read it before.
    assert error["field"] == fields[0] and error["message"].startswith(f"{fields[0]}: ")
    rules = {d["field"]: d["message"] for d in error["details"]}
    assert "30 to 360 minutes" in rules["maintenanceWindowMinutes"]
    assert rules["colour"] == "unknown field"
    assert "Windows one" in rules["schedule.timeZone"]


def test_the_machine_list_reports_every_bad_filter(reader):
    response = reader.request("GET", "/api/machines?os=BeOS&pageSize=0")
    assert response.status_code == 400
    error = body_of(response)["error"]
    assert [d["field"] for d in error["details"]] == ["os", "pageSize"] and error["field"] == "os"


# --- Windows time-zone names --------------------------------------------------------------------------


def test_a_windows_time_zone_is_accepted_and_echoed_as_given(operator):
    name = f"wtz-{uuid.uuid4().hex[:8]}"
    schedule = {"startTime": "2027-07-01T02:00:00", "timeZone": "W. Europe Standard Time"}
    body = {**windows(), "name": name, "schedule": schedule}
    created = operator.request("POST", "/api/deployments", body=body)
    assert created.status_code == 201, created.get_body()
    stored = body_of(created)
    assert stored["schedule"]["timeZone"] == "W. Europe Standard Time"
    # 02:00 in Berlin in July (CEST, UTC+2) is midnight UTC.
    assert stored["nextRun"].startswith("2027-07-01T00:00:00")
    read = body_of(operator.request("GET", f"/api/deployments/{name}"))
    assert read["schedule"]["timeZone"] == "W. Europe Standard Time"
    assert operator.request("DELETE", f"/api/deployments/{name}").status_code == 204


# --- inline runs without a schedule --------------------------------------------------------------------


@pytest.fixture
def durable(app_settings) -> Iterator[DurableRunner]:
    with DurableRunner(function_app.app, VirtualClock(datetime.now(UTC)), task_hub="TestHub") as running:
        yield running


def test_an_inline_run_needs_no_schedule(app_settings, durable):
    host = FunctionsHost(function_app.app, durable.client_binding_json,
                         signed_in_principal=encode_principal("olga", [Role.OPERATOR]))
    body = {k: v for k, v in windows().items() if k != "schedule"}
    body["name"] = f"inline-{uuid.uuid4().hex[:8]}"
    started = host.request("POST", "/api/deployment-runs", body=body)
    assert started.status_code == 202, started.get_body()
    run = host.request("GET", f"/api/deployment-runs/{body_of(started)['runId']}")
    assert run.status_code == 200 and body_of(run)["deployment"] == body["name"]
