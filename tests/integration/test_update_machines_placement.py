"""The machines needing an update (``GET /api/updates/{os}/{update}/machines``) with each machine's asset
category and ring, and the ``?category=`` filter, over the app's HTTP functions (Azurite): the reverse index
joined with the placement on the Machines entities in one query, never a read per machine."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from azure.data.tables import TableClient

import function_app
from local.functions_host import FunctionsHost
from shared.assessment.records import UpdateState
from shared.assessment.updates_table import UPDATE_MACHINES_TABLE, UpdateInventory, index_entity
from shared.azure.tables import table_service
from shared.fleet.machines_table import MACHINES_TABLE
from shared.principal import Role, encode_principal
from shared.settings import load_settings
from tests.integration.test_categories_api import body_of, machine, name, seed, web_category


@pytest.fixture
def operator(app_settings) -> Iterator[FunctionsHost]:
    host = FunctionsHost(function_app.app, signed_in_principal=encode_principal("olga", [Role.OPERATOR]))
    yield host
    for listed in body_of(host.request("GET", "/api/categories"))["categories"]:
        if listed["name"].startswith("t-"):  # categories are fleet-wide: leave none for other tests
            host.request("DELETE", f"/api/categories/{listed['name']}")


class MachinesTableSpy:
    """Counts the Machines table's queries and refuses its point reads, in this process's table clients."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[str] = Counter()
        for method in ("query_entities", "list_entities", "get_entity"):
            original = getattr(TableClient, method)
            monkeypatch.setattr(TableClient, method, self._wrap(method, original))

    def _wrap(self, method: str, original: Any) -> Any:
        spy = self

        def wrapper(client: TableClient, *args: Any, **kwargs: Any) -> Any:
            if client.table_name == MACHINES_TABLE:
                spy.calls[method] += 1
                assert method != "get_entity", "a read per machine"
            return original(client, *args, **kwargs)

        return wrapper


def test_each_machine_needing_an_update_shows_its_category_and_ring_and_filters_by_category(
        operator, monkeypatch):
    subscription = str(uuid.uuid4())
    tag = subscription[:8]
    tester = machine(subscription, f"need-web-t-{tag}", {"role": "web", "ring": "test"})
    server = machine(subscription, f"need-web-p-{tag}", {"role": "web"})
    other = machine(subscription, f"need-db-{tag}", {"role": "db"})
    gone = machine(subscription, f"need-gone-{tag}", {"role": "web"})  # in the index, not in Machines
    seed(subscription, tester, server, other)
    category = name("need")
    created = operator.request("POST", "/api/categories", body=web_category(category, subscription))
    assert created.status_code == 201, created.get_body()

    update = f"needpkg-{tag}"  # an update only these machines miss
    service = table_service(load_settings())
    UpdateInventory(service).ensure()
    gap = {"RowKey": update, "State": UpdateState.NEEDED.value}
    service.get_table_client(UPDATE_MACHINES_TABLE).upsert_entity(
        index_entity("Linux", {**gap, "State": UpdateState.NOT_NEEDED.value}, server.key, server.resource_id,
                     server.computer_name))  # installed since: not listed
    for needing in (tester, server, other, gone):
        service.get_table_client(UPDATE_MACHINES_TABLE).upsert_entity(
            index_entity("Linux", gap, needing.key, needing.resource_id, needing.computer_name))

    spy = MachinesTableSpy(monkeypatch)

    def listed(query: str = "") -> dict[str, tuple[str, str | None]]:
        response = operator.request("GET", f"/api/updates/Linux/{update}/machines{query}")
        assert response.status_code == 200, response.get_body()
        shown = body_of(response)
        assert shown["count"] == len(shown["machines"])
        return {m["computerName"]: (m["category"], m["ring"]) for m in shown["machines"]}

    assert listed() == {
        tester.computer_name: (category, "test"), server.computer_name: (category, "production"),
        other.computer_name: ("uncategorised", None), gone.computer_name: ("uncategorised", None),
    }
    # The category's name in any case; uncategorised takes the machines no category placed.
    assert listed(f"?category={category.upper()}") == {
        tester.computer_name: (category, "test"), server.computer_name: (category, "production")}
    assert listed("?category=Uncategorised") == {
        other.computer_name: ("uncategorised", None), gone.computer_name: ("uncategorised", None)}
    # One query of the Machines table per request, however many machines need the update.
    assert spy.calls == Counter({"list_entities": 2, "query_entities": 1})

    # A name that could not be a Table key (the schemathesis run found "/-…") is unknown, not a storage error.
    for given in ("no-such-category", "%2F-x", "a%23b", "%C2%85"):
        unknown = operator.request("GET", f"/api/updates/Linux/{update}/machines?category={given}")
        assert unknown.status_code == 400, (given, unknown.get_body())
        error = body_of(unknown)["error"]
        assert (error["code"], error["field"]) == ("InvalidParameter", "category")

    document = json.loads(operator.request("GET", "/api/openapi.json").get_body())
    parameters = document["paths"]["/api/updates/{os}/{update}/machines"]["get"]["parameters"]
    assert "category" in {p["name"] for p in parameters}
