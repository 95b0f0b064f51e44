"""Asset categories over the app's HTTP functions (Azurite), the fleet's placement they decide, and the
placement discovery writes on the Machines entity and into Heartbeat_CL (ARM and Log Analytics stand-ins)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.monitor.ingestion import LogsIngestionClient

import function_app
from local.arm.fleet import parse_fleet
from local.arm.server import ArmStandIn
from local.clock import VirtualClock
from local.functions_host import FunctionsHost
from local.loganalytics import LogAnalyticsStandIn
from local.tls import LocalTls
from shared.azure.credentials import EmulatorCredential
from shared.azure.log_outbox import log_outbox
from shared.azure.tables import table_service
from shared.fleet.discovery import discover_subscription
from shared.fleet.machines_table import MachineInventory
from shared.fleet.messages import SubscriptionDiscoveryInput
from shared.governance.categories_table import fleet_placer
from shared.log_tables import HEARTBEAT, TABLES
from shared.model.machines import Machine, MachineKind, OsType, PowerState, machine_key
from shared.principal import Role, encode_principal
from shared.settings import load_settings

NOW = datetime(2026, 1, 13, 2, 0, tzinfo=UTC)


def body_of(response) -> Any:
    return json.loads(response.get_body())


@pytest.fixture
def subscription() -> str:
    return str(uuid.uuid4())  # the session's Azurite is shared: machines of this test's own


@pytest.fixture
def operator(app_settings) -> Iterator[FunctionsHost]:
    host = FunctionsHost(function_app.app, signed_in_principal=encode_principal("olga", [Role.OPERATOR]))
    yield host
    # Categories are fleet-wide: leave none behind for the session's other tests to be placed by.
    for listed in body_of(host.request("GET", "/api/categories"))["categories"]:
        if listed["name"].startswith("t-"):
            host.request("DELETE", f"/api/categories/{listed['name']}")


def name(base: str) -> str:
    return f"t-{base}-{uuid.uuid4().hex[:8]}"


def machine(subscription: str, computer: str, tags: dict[str, str],
            os_type: OsType = OsType.LINUX) -> Machine:
    resource_id = (f"/subscriptions/{subscription}/resourceGroups/rg-app/providers/"
                   f"Microsoft.Compute/virtualMachines/{computer}")
    return Machine(resource_id, computer, computer, MachineKind.AZURE_VM, subscription, "rg-app",
                   "westeurope", os_type, "Ubuntu", "22.04", PowerState.RUNNING, "AutomaticByPlatform", tags)


def seed(subscription: str, *machines: Machine) -> None:
    inventory = MachineInventory(table_service(load_settings()))
    inventory.ensure()
    inventory.record(machines, NOW)


def web_category(category: str, subscription: str, **changes: Any) -> dict[str, Any]:
    return {
        "name": category, "description": "public web servers", "role": "web front end", "criticality": 2,
        "owner": {"name": "Web team", "contact": "web-team@example.com"}, "priority": 10, "patchOrder": 2,
        "membership": {"subscriptionIds": [subscription], "tags": {"role": "web"}},
        "rings": [{"name": "test", "membership": {"tags": {"ring": "test"}}}, {"name": "production"}],
        "deadlines": {"critical": 3, "security": 7},
        "testEvidence": {"minMachines": 1, "bakeHours": 48},
        "autoApprove": {"classifications": ["security"], "minBakeHours": 72},
    } | changes


def placement_of(host: FunctionsHost, resource_id: str) -> tuple[str, str | None]:
    detail = body_of(host.request("GET", f"/api/machines/{machine_key(resource_id)}"))
    return detail["category"], detail["ring"]


def test_create_read_edit_delete_and_the_fleet_placed_each_time(operator, subscription):
    web01, web02 = (machine(subscription, f"cat-web01-{subscription[:8]}", {"role": "web", "ring": "test"}),
                    machine(subscription, f"cat-web02-{subscription[:8]}", {"role": "web"}))
    db01 = machine(subscription, f"cat-db01-{subscription[:8]}", {"role": "db"})
    seed(subscription, web01, web02, db01)
    category = name("web")

    created = operator.request("POST", "/api/categories", body=web_category(category, subscription))
    assert created.status_code == 201, created.get_body()
    view = body_of(created)
    assert created.headers["Location"] == f"/api/categories/{category}" and created.headers["ETag"]
    assert view["testRing"] == "test" and view["deadlines"] == {"critical": 3, "security": 7, "other": 60}
    assert view["placement"]["machines"] >= 3 and view["placement"]["changed"] >= 3
    assert view["placement"]["byCategory"][category] == 2
    assert placement_of(operator, web01.resource_id) == (category, "test")
    assert placement_of(operator, web02.resource_id) == (category, "production")
    assert placement_of(operator, db01.resource_id) == ("uncategorised", None)

    # The machine list filters on the placement; the category's name is matched ignoring case.
    listed = body_of(operator.request("GET", f"/api/machines?category={category.upper()}&pageSize=1000"))
    assert sorted(m["computerName"] for m in listed["machines"]) == sorted([web01.computer_name,
                                                                           web02.computer_name])
    assert {(m["category"], m["ring"]) for m in listed["machines"]} == {(category, "test"),
                                                                       (category, "production")}
    in_test = body_of(operator.request("GET", f"/api/machines?category={category}&ring=TEST"))["machines"]
    assert [m["computerName"] for m in in_test] == [web01.computer_name]
    unknown = operator.request("GET", "/api/machines?category=no-such-category")
    assert unknown.status_code == 400 and body_of(unknown)["error"]["field"] == "category"
    no_ring = operator.request("GET", f"/api/machines?category={category}&ring=pilot")
    assert no_ring.status_code == 400 and "test, production" in body_of(no_ring)["error"]["message"]

    duplicate = operator.request("POST", "/api/categories", body=web_category(category.upper(), subscription))
    assert duplicate.status_code == 409 and body_of(duplicate)["error"]["field"] == "name"

    read = operator.request("GET", f"/api/categories/{category.upper()}")
    assert read.status_code == 200 and body_of(read)["name"] == category
    assert category in [c["name"] for c in body_of(operator.request("GET", "/api/categories"))["categories"]]

    # An edit that widens the membership re-places the fleet: db01 joins.
    wider = web_category(category, subscription, membership={"subscriptionIds": [subscription]})
    edited = operator.request("PUT", f"/api/categories/{category}", body=wider,
                              headers={"If-Match": read.headers["ETag"]})
    assert edited.status_code == 200, edited.get_body()
    assert body_of(edited)["placement"]["byCategory"][category] == 3
    assert placement_of(operator, db01.resource_id) == (category, "production")
    # An edit that moves nobody does not re-place.
    described = operator.request("PUT", f"/api/categories/{category}", body={**wider, "description": "all"})
    assert described.status_code == 200 and body_of(described)["placement"] is None

    stale = operator.request("PUT", f"/api/categories/{category}", body={**wider, "criticality": 1},
                             headers={"If-Match": read.headers["ETag"]})
    assert stale.status_code == 412 and body_of(stale)["error"]["code"] == "EditConflict"
    stale_delete = operator.request("DELETE", f"/api/categories/{category}",
                                    headers={"If-Match": read.headers["ETag"]})
    assert stale_delete.status_code == 412
    renamed = operator.request("PUT", f"/api/categories/{category}", body={**wider, "name": "other"})
    assert renamed.status_code == 400 and body_of(renamed)["error"]["field"] == "name"

    deleted = operator.request("DELETE", f"/api/categories/{category}")
    assert deleted.status_code == 200 and body_of(deleted)["deleted"] == category
    assert body_of(deleted)["placement"]["changed"] >= 3
    assert placement_of(operator, web01.resource_id) == ("uncategorised", None)
    assert operator.request("GET", f"/api/categories/{category}").status_code == 404
    assert operator.request("DELETE", f"/api/categories/{category}").status_code == 404
    assert operator.request("PUT", f"/api/categories/{category}", body=wider).status_code == 404


def test_an_invalid_category_gets_400_listing_every_bad_field_and_nothing_is_stored(operator, subscription):
    category = name("bad")
    bad = {
        "name": category, "criticality": 0, "priority": "first", "colour": "blue",
        "owner": {"contact": "x@example.com"},
        "membership": {"subscriptionIds": ["not-a-guid"], "osType": "BeOS", "tagMatch": "most"},
        "rings": [{"name": "test"}, {"name": "production"}],
        "deadlines": {"critical": 0, "other": 9999},
        "testEvidence": {"minMachines": 0},
        "autoApprove": {"classifications": []},
    }
    response = operator.request("POST", "/api/categories", body=bad)
    assert response.status_code == 400
    error = body_of(response)["error"]
    assert error["code"] == "InvalidField"
    fields = {d["field"]: d["message"] for d in error["details"]}
    assert set(fields) == {
        "criticality", "priority", "colour", "owner.name", "membership.subscriptionIds", "membership.osType",
        "membership.tagMatch", "rings", "deadlines.critical", "deadlines.other", "testEvidence.minMachines",
        "autoApprove.classifications",
    }
    assert "needs a membership" in fields["rings"] and "Windows or Linux" in fields["membership.osType"]
    assert operator.request("GET", f"/api/categories/{category}").status_code == 404
    reserved = operator.request("POST", "/api/categories",
                                body=web_category("uncategorised", subscription))
    assert reserved.status_code == 400 and body_of(reserved)["error"]["field"] == "name"
    assert operator.request("POST", "/api/categories", body=b"{not json").status_code == 400


def test_a_reader_reads_and_cannot_write(operator, subscription):
    category = name("ro")
    created = operator.request("POST", "/api/categories", body=web_category(category, subscription))
    assert created.status_code == 201
    reader = FunctionsHost(function_app.app, signed_in_principal=encode_principal("rita", [Role.READER]))
    assert reader.request("GET", "/api/categories").status_code == 200
    assert reader.request("GET", f"/api/categories/{category}").status_code == 200
    refused = reader.request("POST", "/api/categories", body=web_category(name("ro"), subscription))
    assert refused.status_code == 403 and body_of(refused)["error"]["code"] == "Forbidden"
    assert reader.request("PUT", f"/api/categories/{category}",
                          body=web_category(category, subscription)).status_code == 403
    assert reader.request("DELETE", f"/api/categories/{category}").status_code == 403
    assert operator.request("GET", f"/api/categories/{category}").status_code == 200


def test_the_openapi_document_describes_categories_and_the_machine_filters(app_settings):
    document = body_of(FunctionsHost(function_app.app).request("GET", "/api/openapi.json"))
    assert {"get", "post"} <= set(document["paths"]["/api/categories"])
    assert {"get", "put", "delete"} <= set(document["paths"]["/api/categories/{name}"])
    schemas = document["components"]["schemas"]
    assert {"membership", "rings", "deadlines", "requiresApproval", "testEvidence", "autoApprove", "priority",
            "patchOrder", "criticality", "owner", "role"} <= set(schemas["AssetCategory"]["properties"])
    assert schemas["Membership"]["properties"]["subscriptionIds"]["items"]["pattern"]
    machine_filters = {p["name"] for p in document["paths"]["/api/machines"]["get"]["parameters"]}
    assert {"category", "ring"} <= machine_filters


# --- saved searches through the real LogsQueryClient and the Log Analytics stand-in -------------------

WORKSPACE = "00000000-0000-4000-8000-0000000000cc"
DCR = "dcr-00000000000000000000000000000ccc"


@pytest.fixture
def log_analytics(tls: LocalTls, monkeypatch, app_settings) -> Iterator[LogAnalyticsStandIn]:
    # Every table of the app's DCR, as Azure's: the session's log outbox also holds other tests' rows.
    with LogAnalyticsStandIn(None, tls, workspace_id=WORKSPACE, dcr_immutable_id=DCR, tables=TABLES,
                             clock=VirtualClock(NOW + timedelta(hours=3))) as server:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
        monkeypatch.setenv("LOGS_QUERY_ENDPOINT", server.base_url + "/v1")
        monkeypatch.setenv("LOGS_INGESTION_ENDPOINT", server.base_url)
        monkeypatch.setenv("LOGS_DCR_IMMUTABLE_ID", DCR)
        monkeypatch.setenv("LOG_ANALYTICS_WORKSPACE_ID", WORKSPACE)
        yield server


def test_a_saved_search_places_the_machines_it_returns(operator, subscription, log_analytics, tls):
    sql01 = machine(subscription, f"sql01-{subscription[:8]}", {}, OsType.WINDOWS)
    sql02 = machine(subscription, f"sql02-{subscription[:8]}", {}, OsType.WINDOWS)
    seed(subscription, sql01, sql02)
    ca = str(tls.ca_file)
    with LogsIngestionClient(log_analytics.base_url, EmulatorCredential(), connection_verify=ca) as ingest:
        ingest.upload(DCR, HEARTBEAT.stream, [
            {"TimeGenerated": (NOW + timedelta(hours=2)).isoformat(), "Computer": sql01.computer_name,
             "ResourceId": sql01.resource_id, "OSType": "Windows", "SubscriptionId": subscription}])
    category = name("sql")
    query = f"Heartbeat_CL | where Computer startswith 'sql01' and SubscriptionId == '{subscription}' " \
            "| distinct ResourceId"
    body = web_category(category, subscription, rings=[{"name": "production"}],
                        membership={"subscriptionIds": [subscription], "savedSearch": {"query": query}})
    created = operator.request("POST", "/api/categories", body=body)
    assert created.status_code == 201, created.get_body()
    assert body_of(created)["placement"]["searches"] == {"run": 1, "failed": {}}
    assert placement_of(operator, sql01.resource_id) == (category, "production")
    assert placement_of(operator, sql02.resource_id) == ("uncategorised", None)

    # A query that fails is reported; the machines keep where they were rather than fall out.
    failing = {**body, "membership": {"subscriptionIds": [subscription],
                                      "savedSearch": {"query": "Heartbeat_CL | distinct Computer"}}}
    edited = operator.request("PUT", f"/api/categories/{category}", body=failing)
    assert edited.status_code == 200
    failed = body_of(edited)["placement"]["searches"]["failed"]
    assert body_of(edited)["placement"]["kept"] == 2  # sql01 and sql02: the search might hold them
    assert list(failed) == [category.lower()] and "ResourceId" in failed[category.lower()]
    assert placement_of(operator, sql01.resource_id) == (category, "production")


# --- discovery writes the placement on the entity and into Heartbeat_CL ----------------------------------


@pytest.fixture
def arm(tls: LocalTls, subscription: str, monkeypatch) -> Iterator[ArmStandIn]:
    machines = [
        {"subscription": subscription, "resourceGroup": "rg", "name": computer, "kind": "azure-vm",
         "osType": "Linux", "osName": "ubuntu", "osVersion": "22.04", "location": "westeurope",
         "availableUpdates": [], "tags": tags}
        for computer, tags in (("web01", {"role": "web", "ring": "test"}), ("db01", {"role": "db"}))
    ]
    fleet = parse_fleet({"subscriptions": [{"id": subscription}], "machines": machines})
    with ArmStandIn(fleet, VirtualClock(NOW), tls) as server:
        monkeypatch.setenv("ARM_ENDPOINT", server.base_url)
        monkeypatch.setenv("TARGET_SUBSCRIPTION_IDS", subscription)
        yield server


def test_discovery_places_each_machine_and_its_heartbeat_says_where(operator, subscription, arm,
                                                                    log_analytics):
    category = name("web")
    created = operator.request("POST", "/api/categories", body=web_category(category, subscription))
    assert created.status_code == 201, created.get_body()
    settings = load_settings()
    request = SubscriptionDiscoveryInput(run_id="discovery-categories", subscription_id=subscription,
                                         observed_at=NOW)
    counts = discover_subscription(settings, request, fleet_placer(settings))
    assert counts.machines == 2 and counts.heartbeats == 2
    report = log_outbox(settings).send_pending("send-categories", NOW)
    assert not report.errors, report
    rows = log_analytics.query(f"Heartbeat_CL | where SubscriptionId == '{subscription}' "
                               "| project Computer, AssetCategory, Ring | order by Computer asc")
    assert [(r["Computer"], r["AssetCategory"], r["Ring"]) for r in rows] == [
        ("db01", "uncategorised", ""), ("web01", category, "test")]
    web01 = f"/subscriptions/{subscription}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/" \
            "web01"
    assert placement_of(operator, web01) == (category, "test")
