"""A deployment of 10,000 machines (MAX_MACHINES) through the stores on Azurite: the definition, its frozen
group members and the run's copies round-trip, and every entity written stays within Table Storage's
limits, which Azurite does not enforce (so the test measures them)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from shared.azure.tables import INLINE_TEXT_CHARS, read_text, store_text, write_text_rows
from shared.deployments.definition import MAX_MACHINES, validate_definition
from shared.deployments.definitions_table import DEPLOYMENTS_TABLE, DeploymentExists, DeploymentStore
from shared.deployments.runs_table import RUNS_TABLE, MachineTarget, RunState, RunStore, machine_row_key
from shared.model.machines import machine_key

SUB = "44444444-4444-4444-8444-444444444444"
START = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
# The longest names Azure allows: a resource group of 90 characters and a machine of 64, so 10,000 ids
# are about 2.7 MB, the worst case the stores must hold (a typical id is about 150 characters).
GROUP = "rg-" + "g" * 87
# Table Storage limits ("Understanding the Table service data model"): 1 MiB an entity, 64 KiB a
# property; an entity's size is 4 bytes + 2 per key character + per property 8 bytes, 2 per name
# character and its value (a string: 4 bytes + 2 per character; 8 for a number, date or GUID).
MAX_ENTITY_BYTES = 1_048_576
MAX_PROPERTY_BYTES = 65_536


def rid(n: int, kind: str = "vm") -> str:
    name = f"{kind}-{n:05d}-" + "x" * (64 - len(kind) - 7)
    return f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.Compute/virtualMachines/{name}"


def definition(name: str, machines: list[str], groups: bool = False) -> Any:
    targets: dict[str, Any] = {"machines": machines}
    if groups:
        targets["groups"] = [{"filter": {"subscriptionIds": [SUB]}}]
    return validate_definition({
        "name": name, "operatingSystem": "Linux", "targets": targets,
        "classifications": ["Critical and security updates"],
        "schedule": {"startTime": "2026-03-10T02:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 120, "rollout": {"maxConcurrent": "10%", "errorBudget": "5%"},
    })  # fmt: skip


def entity_bytes(entity: dict[str, Any]) -> int:
    size = 4 + 2 * (len(str(entity["PartitionKey"])) + len(str(entity["RowKey"])))
    for name, value in entity.items():
        if name in ("PartitionKey", "RowKey"):
            continue
        size += 8 + 2 * len(name) + (4 + 2 * len(value) if isinstance(value, str) else 8)
    return size


def assert_within_limits(table: Any, partitions: list[str]) -> int:
    """Every entity of ``partitions`` within the entity and property limits; returns how many."""
    count = 0
    for partition in partitions:
        for entity in table.query_entities("PartitionKey eq @p", parameters={"p": partition}):
            row = dict(entity)
            assert entity_bytes(row) < MAX_ENTITY_BYTES, (partition, row["RowKey"], entity_bytes(row))
            for name, value in row.items():
                if isinstance(value, str):
                    assert 4 + 2 * len(value) <= MAX_PROPERTY_BYTES, (partition, row["RowKey"], name)
            count += 1
    return count


@pytest.fixture
def service(azurite) -> TableServiceClient:
    return TableServiceClient.from_connection_string(azurite.connection_string)


def test_a_deployment_of_10000_machines_and_10000_members_round_trips(service):
    store = DeploymentStore(service)
    store.ensure()
    name = f"fleet-{uuid.uuid4().hex[:8]}"
    machines = [rid(n) for n in range(MAX_MACHINES)]
    members = tuple(rid(n, "grp") for n in range(MAX_MACHINES))
    created = store.create(definition(name, machines, groups=True), members, START)

    again = store.get(name)
    assert list(again.definition.targets.machines) == machines
    assert again.frozen_members == members == created.frozen_members
    assert [d.definition.name for d in store.list() if d.definition.name == name] == [name]
    table = service.get_table_client(DEPLOYMENTS_TABLE)
    # The listing entity, and each row of its two texts (2.7 MB each, in rows of about 600 KB).
    assert assert_within_limits(table, ["deployment", f"deployment|{name}"]) > 2 * 5

    # An edit to a short target list drops the long texts' rows: the definition and members are inline.
    edited = store.replace(again, definition(name, machines[:3], groups=True), members[:2], again.etag, START)
    assert edited.frozen_members == members[:2] and len(edited.definition.targets.machines) == 3
    assert list(table.query_entities("PartitionKey eq @p", parameters={"p": f"deployment|{name}"})) == []

    store.delete(name)


def test_deleting_a_large_deployment_deletes_its_rows(service):
    store = DeploymentStore(service)
    store.ensure()
    name = f"fleet-{uuid.uuid4().hex[:8]}"
    store.create(definition(name, [rid(n) for n in range(MAX_MACHINES)]), None, START)
    table = service.get_table_client(DEPLOYMENTS_TABLE)
    rows = list(table.query_entities("PartitionKey eq @p", parameters={"p": f"deployment|{name}"}))
    assert rows
    # A second create of the name is refused and leaves none of its own rows behind.
    with pytest.raises(DeploymentExists):
        store.create(definition(name.upper(), [rid(n, "other") for n in range(MAX_MACHINES)]), None, START)
    after = list(table.query_entities("PartitionKey eq @p", parameters={"p": f"deployment|{name}"}))
    assert [r["RowKey"] for r in after] == [r["RowKey"] for r in rows]
    store.delete(name)
    assert list(table.query_entities("PartitionKey eq @p", parameters={"p": f"deployment|{name}"})) == []


def test_a_run_of_10000_machines_keeps_its_definition_members_and_rows(service):
    store = RunStore(service)
    store.ensure()
    run_id = f"deploy-fleet-{uuid.uuid4().hex[:8]}"
    machines = [rid(n) for n in range(MAX_MACHINES)]
    members = tuple(rid(n, "grp") for n in range(MAX_MACHINES))
    deployment = definition("fleet", machines, groups=True)
    assert store.create_run(run_id, deployment, "schedule", START, occurrence=START, members=members)
    assert not store.create_run(run_id, deployment, "schedule", START, occurrence=START, members=members)

    run = store.get_run(run_id)
    assert list(run.definition.targets.machines) == machines
    assert store.frozen_members(run_id) == members
    table = service.get_table_client(RUNS_TABLE)
    run_row = table.get_entity(run_id, "run")
    assert "DefinitionRows" in run_row and "MembersRows" in run_row  # both passed what the row may hold
    assert entity_bytes(dict(run_row)) < 2 * INLINE_TEXT_CHARS  # the gate reads a small row

    # Resolving writes one row per machine, 100 to a transaction, in batches of 50 in row-key order (as
    # shared.deployments.resolve orders them), and one row per batch with its bounds; a batch reads its 50.
    ordered = sorted(machines, key=machine_key)
    targets = [MachineTarget(machine_key(r), r, f"vm-{n:05d}", n // 50) for n, r in enumerate(ordered)]
    resolved = store.resolve(run_id, START, targets, [])
    assert resolved.state is RunState.RUNNING
    assert (resolved.targets, resolved.to_run) == (MAX_MACHINES, MAX_MACHINES)
    assert store.batch_machines(run_id, 199) == sorted(ordered[-50:])
    first, last = store.batch_range(run_id, 199) or ("", "")
    assert first == machine_row_key(machine_key(ordered[-50]))
    assert last == machine_row_key(machine_key(ordered[-1]))
    in_range = list(table.query_entities("PartitionKey eq @p and RowKey ge @lo and RowKey le @hi",
                                         parameters={"p": run_id, "lo": first, "hi": last}))
    assert len(in_range) == 50  # the batch's rows are its key range: a claim's query reads those alone
    assert len(store.machines(run_id)) == MAX_MACHINES
    assert assert_within_limits(table, [run_id]) == 1 + MAX_MACHINES + MAX_MACHINES // 50
    texts = assert_within_limits(table, [f"{run_id}|text"])
    assert texts == run_row["DefinitionRows"] + run_row["MembersRows"] >= 2 * 5
    # Closed, so the other tests' reconciler (one Azurite for the session) does not spend its time
    # giving 10,000 machines a result.
    store.close(run_id, RunState.COMPLETED, "", START)


def test_text_whose_rows_are_missing_is_an_error_not_a_short_list(service):
    RunStore(service).ensure()
    table = service.get_table_client(RUNS_TABLE)
    text = "[" + ",".join(f'"{rid(n, "lost")}"' for n in range(MAX_MACHINES)) + "]"
    partition = f"lost-{uuid.uuid4().hex[:8]}"
    properties, rows = store_text("Members", text, partition, "members|")
    assert len(text) > INLINE_TEXT_CHARS and len(rows) > 1
    write_text_rows(table, rows[:-1])  # the last row never arrived
    with pytest.raises(LookupError, match=f"has {len(rows) - 1} of its {len(rows)} rows"):
        read_text(table, {"RowKey": "run", **properties}, "Members")
    write_text_rows(table, rows[-1:])
    assert read_text(table, {"RowKey": "run", **properties}, "Members") == text


@pytest.mark.parametrize("machines", [100, 2_000])
def test_a_claim_reads_its_batch_alone_whatever_the_size_of_the_run(service, machines):
    """Issue "10,000 machines a cycle": no query of the deployment path reads rows whose number grows
    with the fleet. A claim's query is a key range (the batch's bounds) and the Table service reads every
    row of that range: the rows of the range are counted, the same 50 in a run of 100 and of 2,000."""
    store = RunStore(service)
    store.ensure()
    run_id = f"deploy-claims-{uuid.uuid4().hex[:8]}"
    ids = [rid(n) for n in range(machines)]
    assert store.create_run(run_id, definition("claims", ids), "http", START, occurrence=START)
    ordered = sorted(ids, key=machine_key)  # resolution's order (shared.deployments.resolve)
    targets = [MachineTarget(machine_key(r), r, f"vm-{n:05d}", n // 50) for n, r in enumerate(ordered)]
    store.resolve(run_id, START, targets, [])
    table = service.get_table_client(RUNS_TABLE)
    filters: list[tuple[str, dict[str, Any]]] = []
    original = store._runs.query_entities

    def recording(query_filter: str, **kwargs: Any) -> Any:
        filters.append((query_filter, dict(kwargs.get("parameters") or {})))
        return original(query_filter, **kwargs)

    store._runs.query_entities = recording  # type: ignore[method-assign]
    batch = 1
    key_range = store.batch_range(run_id, batch)
    assert key_range is not None
    queue = ordered[50:100]
    claim = store.claim(run_id, queue, {r: machine_key(r) for r in queue}, START, batch=batch,
                        key_range=key_range)
    assert claim.start  # the gate let some start (10 % of the run at once)
    store.close(run_id, RunState.COMPLETED, "", START)
    assert len(filters) == 1, filters
    query_filter, parameters = filters[0]
    assert "RowKey ge @lo and RowKey le @hi" in query_filter and " or " not in query_filter
    scanned = list(table.query_entities(query_filter.replace(" and Batch eq @b", ""), parameters=parameters))
    assert len(scanned) == 50
