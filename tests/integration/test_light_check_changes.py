"""The light check's "what changed since the last look" read from Resource Graph: ``find_changed`` with
Azurite, the ARM stand-in (the listing: power state, OS) and the Resource Graph stand-in over HTTPS.

The Resource Graph rows are written here through the stand-in's store (``put_installation``,
``put_assessment``), in the shapes the ARM simulation writes (``local/resourcegraph/rows.py``): an
install made outside the product (the platform's, Azure Update Manager's, another tool's) on an Azure VM
and on an Arc server is seen the same way, which the machines' own ARM resources cannot tell.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from local.arm.fleet import parse_fleet
from local.arm.server import ArmStandIn
from local.arm.simulation import InstallOutcome, MachineState, Simulation
from local.clock import VirtualClock
from local.resourcegraph import ResourceGraphStandIn, assessment_rows, installation_rows
from local.resourcegraph.rows import STARTED_BY_PLATFORM
from local.tls import LocalTls, ensure_local_tls
from shared.assessment.baselines_table import BASELINE_TABLE, BaselineStore, chosen_machines, find_changed
from shared.assessment.light_check import ChangedMachines, FindChangedInput, Reason
from shared.azure.tables import ensure_table, table_service
from shared.fleet.machines_table import MACHINES_TABLE
from shared.model.machines import machine_key
from shared.settings import load_settings

SUB = "44444444-4444-4444-8444-444444444444"
NOW = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
ASSESSED = NOW - timedelta(hours=1)  # when the product last saw its assessments end
UNREACHABLE = "https://127.0.0.1:9"


def _machine(name: str, kind: str) -> dict[str, Any]:
    return {"subscription": SUB, "resourceGroup": "rg-app", "name": name, "kind": kind, "osType": "Linux",
            "osName": "ubuntu", "osVersion": "22.04", "location": "westeurope",
            "availableUpdates": ["openssl", "sudo"]}  # fmt: skip


FLEET = parse_fleet({"subscriptions": [{"id": SUB}], "machines": [
    _machine("vm-01", "azure-vm"), _machine("arc-01", "arc-server"),
]})  # fmt: skip
VM, ARC = FLEET.machines
# The machines' updates, for the rows (the ARM stand-in of the tests has its own simulation).
STATES = {m.resource_id: Simulation(FLEET, VirtualClock(NOW)).machine(m.resource_id) for m in FLEET.machines}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> LocalTls:
    return ensure_local_tls(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(NOW)


@pytest.fixture
def arm(tls: LocalTls, clock: VirtualClock) -> Iterator[ArmStandIn]:
    with ArmStandIn(FLEET, clock, tls) as server:  # not wired to Resource Graph: the rows are written here
        yield server


@pytest.fixture
def graph(tls: LocalTls, clock: VirtualClock) -> Iterator[ResourceGraphStandIn]:
    with ResourceGraphStandIn(tls, clock=clock) as running:
        yield running


@pytest.fixture
def settings(app_settings, arm, graph, tls, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in {
        "TARGET_SUBSCRIPTION_IDS": SUB, "ARM_ENDPOINT": arm.base_url,
        "RESOURCE_GRAPH_ENDPOINT": graph.base_url, "REQUESTS_CA_BUNDLE": str(tls.ca_file),
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    settings = load_settings()
    service = table_service(settings)
    ensure_table(service, MACHINES_TABLE)
    machines = service.get_table_client(MACHINES_TABLE)
    baselines = BaselineStore(service)
    baselines.ensure()
    for machine in FLEET.machines:  # both assessed by the product an hour ago, no baseline yet
        # As the product's recording writes it: the machine's identity with its assessment columns.
        machines.upsert_entity({"PartitionKey": SUB, "RowKey": machine_key(machine.resource_id),
                                "ResourceId": machine.resource_id, "Name": machine.name,
                                "LastAssessed": ASSESSED, "Readiness": "Ready"})  # fmt: skip
        service.get_table_client(BASELINE_TABLE).delete_entity(SUB, machine_key(machine.resource_id))
    return settings


def _assessed(standin: ResourceGraphStandIn, machine: Any, at: datetime, **how: Any) -> None:
    state: MachineState = STATES[machine.resource_id]
    rows = assessment_rows(machine, state.available, assessment_id=f"assess-{at:%H%M}",
                           started=at - timedelta(minutes=2), finished=at, reboot_pending=False, **how)
    standin.store.put_assessment(machine.resource_id, rows)


def _installed_outside(standin: ResourceGraphStandIn, machine: Any, run: str, at: datetime) -> None:
    """An install the product did not start, as Resource Graph keeps it."""
    state: MachineState = STATES[machine.resource_id]
    outcome = InstallOutcome([(state.available[0], "Installed")], timedelta(minutes=5), False, "NotNeeded",
                             False)  # fmt: skip
    rows = installation_rows(machine, outcome.states, installation_id=run, started=at - timedelta(minutes=5),
                             finished=at, status=outcome.status, reboot_status=outcome.reboot_status,
                             window_exceeded=False, started_by=STARTED_BY_PLATFORM)  # fmt: skip
    standin.store.put_installation(rows)


def _check(settings: Any, clock: VirtualClock, name: str) -> ChangedMachines:
    request = FindChangedInput(check_id=name, run_id=f"{name}-assessment", subscription_ids=(SUB,),
                               at=clock.now())  # fmt: skip
    return find_changed(settings, request)


def test_an_install_outside_the_product_on_a_vm_and_an_arc_server_is_seen(settings, graph, clock):
    # Resource Graph has the product's own assessments (ended before it saw them end) and an install
    # older than the check's look-back.
    for machine in FLEET.machines:
        _assessed(graph, machine, ASSESSED - timedelta(seconds=30))
    _installed_outside(graph, VM, "old-run", NOW - timedelta(days=3))
    queries = graph.counters.queries
    first = _check(settings, clock, "check-1")
    assert (first.reassess, first.changed, first.adopted, first.activity_error) == (0, 0, 2, "")
    assert graph.counters.queries - queries == 2  # one query per table, for the whole fleet

    clock.advance(timedelta(minutes=15))
    _installed_outside(graph, VM, "platform-run-vm", NOW + timedelta(minutes=10))
    _installed_outside(graph, ARC, "platform-run-arc", NOW + timedelta(minutes=12))
    second = _check(settings, clock, "check-2")
    assert second.reassess == 2 and second.by_reason == {Reason.INSTALL_CHANGED.value: 2}
    stored = {o.resource_id: o for o in chosen_machines(settings, "check-2-assessment")}
    assert {r: o.install_id for r, o in stored.items()} == {
        VM.resource_id: "platform-run-vm", ARC.resource_id: "platform-run-arc",
    }  # the baseline the assessment run will write for each  # fmt: skip
    assert datetime.fromisoformat(stored[ARC.resource_id].install_at) == NOW + timedelta(minutes=12)


def test_an_assessment_made_elsewhere_is_seen_and_the_products_own_is_not(settings, graph, clock):
    for machine in FLEET.machines:
        _assessed(graph, machine, ASSESSED - timedelta(seconds=30))
    assert _check(settings, clock, "elsewhere-1").adopted == 2
    clock.advance(timedelta(minutes=15))
    _assessed(graph, ARC, NOW + timedelta(minutes=5), started_by=STARTED_BY_PLATFORM)
    found = _check(settings, clock, "elsewhere-2")
    assert found.by_reason == {Reason.ASSESSED_ELSEWHERE.value: 1}
    assert [o.resource_id for o in chosen_machines(settings, "elsewhere-2-assessment")] == [ARC.resource_id]
    baselines = BaselineStore(table_service(settings)).read(SUB)
    assert set(baselines) == {machine_key(VM.resource_id), machine_key(ARC.resource_id)}


def test_without_resource_graph_a_new_machine_is_still_found_and_none_adopted(settings, graph, monkeypatch):
    monkeypatch.setenv("RESOURCE_GRAPH_ENDPOINT", UNREACHABLE)
    service = table_service(settings)
    never_assessed = machine_key(ARC.resource_id)
    service.get_table_client(MACHINES_TABLE).delete_entity(SUB, never_assessed)
    found = _check(load_settings(), VirtualClock(NOW), "check-blind")
    assert "Resource Graph" in found.activity_error
    assert found.by_reason == {Reason.NEVER_ASSESSED.value: 1} and found.adopted == 0
