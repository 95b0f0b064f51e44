"""The bench's reading of a request: which service it went to and what it did there (bench/counting.py),
and how a fleet is split into deployments that each fit the definition's limit (bench/runs.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.counting import (
    ARM,
    BLOB,
    LOG_QUERY,
    LOGS_INGESTION,
    OTHER,
    RESOURCE_GRAPH,
    TABLE,
    Request,
    arm_operation,
    classify,
    endpoints,
    table_operation,
)
from bench.runs import Placement, target_groups

SETTINGS = {
    "ARM_ENDPOINT": "https://127.0.0.1:8443/",
    "RESOURCE_GRAPH_ENDPOINT": "https://127.0.0.1:8444",
    "LOGS_INGESTION_ENDPOINT": "https://127.0.0.1:8445",
    "LOGS_QUERY_ENDPOINT": "https://127.0.0.1:8445/v1",
    "STORAGE_CONNECTION_STRING": (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
        "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
        "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
    ),
}
KNOWN = endpoints(SETTINGS)
VM = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web-1"
# An entity group transaction's body as azure-data-tables sends it (multipart/mixed, one change set).
BATCH_BODY = (
    b"--batch_1\r\nContent-Type: multipart/mixed; boundary=changeset_1\r\n\r\n"
    b"--changeset_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    b"PATCH http://127.0.0.1:10002/devstoreaccount1/DeploymentRuns(PartitionKey='r',RowKey='run')"
    b" HTTP/1.1\r\n"
    b"Content-Type: application/json\r\n\r\n{}\r\n"
    b"--changeset_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    b"PUT http://127.0.0.1:10002/devstoreaccount1/DeploymentRuns(PartitionKey='r',RowKey='m%7Cab')"
    b" HTTP/1.1\r\n"
    b"Content-Type: application/json\r\n\r\n{}\r\n"
    b"--changeset_1--\r\n--batch_1--\r\n"
)


@pytest.mark.parametrize(("method", "url", "expected"), [
    ("POST", f"https://127.0.0.1:8443{VM}/assessPatches?api-version=2024-07-01",
     Request(ARM, "", "POST assessPatches")),
    ("POST", "https://127.0.0.1:8444/providers/Microsoft.ResourceGraph/resources?api-version=2022-10-01",
     Request(RESOURCE_GRAPH, "", "POST")),
    ("POST", "https://127.0.0.1:8445/dataCollectionRules/dcr-1/streams/Custom-Update_CL?api-version=2023-01-01",
     Request(LOGS_INGESTION, "Custom-Update_CL", "POST")),
    ("POST", "https://127.0.0.1:8445/v1/workspaces/w/query", Request(LOG_QUERY, "", "POST")),
    ("GET", "http://127.0.0.1:10002/devstoreaccount1/Machines()?$filter=x",
     Request(TABLE, "Machines", "query")),
    ("PUT", "http://127.0.0.1:10000/devstoreaccount1/run-logs/r/m/install.json",
     Request(BLOB, "run-logs", "put")),
    ("GET", "http://127.0.0.1:10000/devstoreaccount1/run-logs?restype=container&comp=list",
     Request(BLOB, "run-logs", "list")),
    ("GET", "https://127.0.0.1:9999/anything", Request(OTHER, "127.0.0.1:9999", "GET")),
])  # fmt: skip
def test_a_request_is_counted_for_the_service_its_endpoint_belongs_to(method, url, expected):
    assert classify(method, url, b"", KNOWN) == expected


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "/Machines()", ("Machines", "query")),
    ("GET", "/Machines", ("Machines", "query")),
    ("GET", "/Machines(PartitionKey='p',RowKey='r')", ("Machines", "get")),
    ("POST", "/Machines", ("Machines", "insert")),
    ("PUT", "/Machines(PartitionKey='p',RowKey='r')", ("Machines", "upsert/replace")),
    ("PATCH", "/Machines(PartitionKey='p',RowKey='r')", ("Machines", "upsert/merge")),
    ("MERGE", "/Machines(PartitionKey='p',RowKey='r')", ("Machines", "upsert/merge")),
    ("DELETE", "/Machines(PartitionKey='p',RowKey='r')", ("Machines", "delete")),
    ("GET", "/Tables", ("(tables)", "list tables")),
    ("DELETE", "/Tables('Machines')", ("Machines", "delete table")),
])  # fmt: skip
def test_a_table_request_names_its_table_and_operation(method, path, expected):
    assert table_operation(method, path) == expected


def test_a_table_is_created_by_the_name_in_the_body():
    assert table_operation("POST", "/Tables", b'{"TableName": "Machines"}') == ("Machines", "create table")


def test_a_transaction_is_counted_once_for_the_table_of_its_changes():
    assert classify("POST", "http://127.0.0.1:10002/devstoreaccount1/$batch", BATCH_BODY, KNOWN) == Request(
        TABLE, "DeploymentRuns", "transaction"
    )


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", f"{VM}", "GET one machine"),
    ("GET", "/subscriptions/s/providers/Microsoft.Compute/virtualMachines?statusOnly=true",
     "GET virtualMachines (list)"),
    ("GET", "/subscriptions/s/providers/Microsoft.Compute/locations/eastus/operations/abc",
     "GET operations (operation status)"),
    ("POST", f"{VM}/installPatches", "POST installPatches"),
])  # fmt: skip
def test_an_arm_request_says_what_it_asked_for(method, path, expected):
    assert arm_operation(method, path) == expected


def places(*counts: tuple[str, int]) -> list[Placement]:
    return [Placement("s", group, "eastus") for group, n in counts for _ in range(n)]


def test_a_fleet_within_the_limit_is_one_deployment_over_its_subscriptions():
    machines = [*places(("rg-a", 3)), Placement("t", "rg-b", "westus")]
    assert target_groups(machines, limit=10) == [[{"subscriptionIds": ["s", "t"]}]]


def test_a_larger_fleet_is_split_by_place_into_deployments_within_the_limit():
    machines = places(("rg-a", 6), ("rg-b", 5), ("rg-c", 4), ("rg-d", 3))
    deployments = target_groups(machines, limit=10)
    count = Counter(g.resource_group for g in machines)
    held = [[count[g["resourceGroups"][0]] for g in d] for d in deployments]
    assert all(sum(counts) <= 10 for counts in held)
    assert sorted(g["resourceGroups"][0] for d in deployments for g in d) == ["rg-a", "rg-b", "rg-c", "rg-d"]
    assert len(deployments) == 2


def test_a_deployment_holds_at_most_the_groups_a_definition_allows():
    machines = places(*((f"rg-{n}", 1) for n in range(5)))
    assert [len(d) for d in target_groups(machines, limit=4, max_groups=2)] == [2, 2, 1]


def test_a_place_larger_than_the_limit_is_refused():
    with pytest.raises(ValueError, match="more than 2"):
        target_groups(places(("rg-a", 3)), limit=2)
