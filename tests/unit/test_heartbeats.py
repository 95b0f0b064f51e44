"""When discovery sends a machine's Heartbeat_CL row: at most hourly, unless something in it changed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.fleet.heartbeats import (
    HEARTBEAT_INTERVAL,
    LastHeartbeat,
    heartbeat_fingerprint,
    heartbeat_row,
    heartbeats_to_send,
    last_heartbeat,
)
from shared.model.machines import Machine, MachineKind, OsType, PowerState

SUBSCRIPTION = "00000000-0000-4000-8000-000000000001"
START = datetime(2026, 1, 12, 0, 0, tzinfo=UTC)
PERIOD = timedelta(minutes=15)  # FLEET_DISCOVERY_SCHEDULE's default


def vm(name: str, **changes: Any) -> Machine:
    machine = Machine(
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{name}",
        name, name, MachineKind.AZURE_VM, SUBSCRIPTION, "rg", "westeurope", OsType.LINUX, "ubuntu", "22.04",
        PowerState.RUNNING, "ImageDefault", {"env": "prod"},
    )
    return replace(machine, **changes)


class Inventory:
    """The Machines table's memory of heartbeats, as discovery reads and writes it."""

    def __init__(self) -> None:
        self.entities: dict[str, dict[str, object]] = {}
        self.sent: list[tuple[str, datetime]] = []

    def discover(self, machines: list[Machine], at: datetime, run_id: str) -> list[dict[str, object]]:
        last = {k: h for k, e in self.entities.items() if (h := last_heartbeat(e)) is not None}
        rows, sent = heartbeats_to_send(machines, at, run_id, last)
        for key, properties in sent.items():
            self.entities.setdefault(key, {}).update(properties)
        self.sent += [(str(r["Computer"]), at) for r in rows]
        return rows


def discoveries(count: int, jitter: timedelta = timedelta(0)) -> list[datetime]:
    """Discovery times: the timer slots, each run starting ``jitter`` after its slot (the first runs late)."""
    return [START + i * PERIOD + (jitter if i == 0 else timedelta(0)) for i in range(count)]


def test_eight_discoveries_in_two_hours_of_an_unchanged_machine_send_two_heartbeats():
    inventory = Inventory()
    for i, at in enumerate(discoveries(8, jitter=timedelta(seconds=3))):
        inventory.discover([vm("web01")], at, f"discovery-{i}")
    assert [at for _, at in inventory.sent] == [START + timedelta(seconds=3), START + HEARTBEAT_INTERVAL]


def test_a_power_state_change_sends_a_heartbeat_at_once_and_the_hour_starts_again():
    inventory = Inventory()
    for i, at in enumerate(discoveries(8)):
        stopped = at >= START + 2 * PERIOD  # deallocated just before the third discovery
        power = PowerState.DEALLOCATED if stopped else PowerState.RUNNING
        machines = [vm("web01"), vm("db01", power_state=power)]
        inventory.discover(machines, at, f"discovery-{i}")
    sent = {name: [at - START for n, at in inventory.sent if n == name] for name in ("web01", "db01")}
    assert sent["web01"] == [timedelta(0), timedelta(hours=1)]
    assert sent["db01"] == [timedelta(0), timedelta(minutes=30), timedelta(minutes=90)]


def test_any_change_in_the_row_counts_and_the_time_does_not():
    at = START
    base = heartbeat_fingerprint(heartbeat_row(vm("web01"), at, "r1"))
    assert heartbeat_fingerprint(heartbeat_row(vm("web01"), at + PERIOD, "r2")) == base
    for changed in (vm("web01", tags={"env": "test"}), vm("web01", patch_mode="AutomaticByPlatform"),
                    vm("web01", os_version="24.04")):
        assert heartbeat_fingerprint(heartbeat_row(changed, at, "r1")) != base


def test_a_retried_discovery_sends_its_rows_again_with_the_same_record_ids():
    inventory = Inventory()
    first = inventory.discover([vm("web01")], START, "discovery-0")
    again = inventory.discover([vm("web01")], START, "discovery-0")  # the activity delivered twice
    assert [r["RecordId"] for r in again] == [r["RecordId"] for r in first]  # the outbox keeps one


def test_an_entity_without_a_heartbeat_yet_is_sent_one():
    assert last_heartbeat({"RowKey": "k"}) is None
    remembered = {"LastHeartbeatAt": START, "HeartbeatFingerprint": "abc"}
    assert last_heartbeat(remembered) == LastHeartbeat(START, "abc")
