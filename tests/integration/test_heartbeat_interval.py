"""Discovery through the real activity (ARM stand-in, Azurite, Log Analytics stand-in): an unchanged
machine's heartbeat goes hourly, a changed one's at once, decided from the Machines table alone."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from local.arm.fleet import parse_fleet
from local.arm.server import ArmStandIn
from local.azurite import Azurite
from local.clock import VirtualClock
from local.loganalytics import LogAnalyticsStandIn
from local.tls import LocalTls
from shared.azure.log_outbox import log_outbox
from shared.fleet.discovery import discover_subscription
from shared.fleet.messages import SubscriptionDiscoveryInput
from shared.settings import Settings, load_settings

WORKSPACE = "00000000-0000-4000-8000-0000000000dd"
DCR = "dcr-00000000000000000000000000000ddd"
START = datetime(2026, 1, 12, 0, 0, 2, tzinfo=UTC)  # an orchestration starts a moment after its slot
PERIOD = timedelta(minutes=15)  # FLEET_DISCOVERY_SCHEDULE's default



@pytest.fixture
def subscription() -> str:
    return str(uuid.uuid4())  # the session's Azurite is shared: a subscription of this test's own


@pytest.fixture
def arm(tls: LocalTls, subscription: str) -> Iterator[ArmStandIn]:
    machines = [
        {"subscription": subscription, "resourceGroup": "rg", "name": name, "kind": "azure-vm",
         "osType": "Linux", "osName": "ubuntu", "osVersion": "22.04", "location": "westeurope",
         "availableUpdates": ["openssl"], "tags": {"env": "prod"}}
        for name in ("web01", "db01")
    ]
    fleet = parse_fleet({"subscriptions": [{"id": subscription}], "machines": machines})
    with ArmStandIn(fleet, VirtualClock(START), tls) as server:
        yield server


@pytest.fixture
def loganalytics(tls: LocalTls) -> Iterator[LogAnalyticsStandIn]:
    clock = VirtualClock(START + timedelta(hours=3))
    with LogAnalyticsStandIn(None, tls, workspace_id=WORKSPACE, dcr_immutable_id=DCR, clock=clock) as running:
        yield running


@pytest.fixture
def settings(azurite: Azurite, arm: ArmStandIn, loganalytics: LogAnalyticsStandIn, tls: LocalTls,
             subscription: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    return load_settings({
        "DURABLE_TASK_HUB": "HeartbeatTests",
        "AZURE_AUTH_MODE": "emulator",
        "TARGET_SUBSCRIPTION_IDS": subscription,
        "ARM_ENDPOINT": arm.base_url,
        "STORAGE_CONNECTION_STRING": azurite.connection_string,
        "LOGS_INGESTION_ENDPOINT": loganalytics.base_url,
        "LOGS_DCR_IMMUTABLE_ID": DCR,
        "LOG_ANALYTICS_WORKSPACE_ID": WORKSPACE,
        "LOGS_QUERY_ENDPOINT": loganalytics.base_url + "/v1",
    })


def test_eight_discoveries_in_two_hours_send_two_heartbeats_and_a_power_change_one_at_once(
    settings: Settings, arm: ArmStandIn, loganalytics: LogAnalyticsStandIn, subscription: str
):
    db01 = f"/subscriptions/{subscription}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/db01"
    queued = []
    for i in range(8):
        at = START + i * PERIOD
        if i == 2:
            arm.simulation.set_power_state(db01, "deallocated")  # just before the third discovery
        request = SubscriptionDiscoveryInput(run_id=f"discovery-{i}", subscription_id=subscription,
                                             observed_at=at)
        queued.append(discover_subscription(settings, request).heartbeats)
        if i == 4:  # the activity delivered again: the same rows, which the outbox keeps once
            assert discover_subscription(settings, request).heartbeats == 1
        report = log_outbox(settings).send_pending(f"send-{i}", at)
        assert not report.errors, report

    assert queued == [2, 0, 1, 0, 1, 0, 1, 0]
    rows = loganalytics.query(
        f"Heartbeat_CL | where SubscriptionId == '{subscription}' "
        "| project Computer, TimeGenerated, PowerState | order by Computer asc, TimeGenerated asc"
    )
    sent = {(r["Computer"], r["TimeGenerated"] - START, r["PowerState"]) for r in rows}
    assert sent == {
        ("db01", timedelta(0), "running"),
        ("db01", 2 * PERIOD, "deallocated"),  # at once
        ("db01", 6 * PERIOD, "deallocated"),  # an hour after that
        ("web01", timedelta(0), "running"),
        ("web01", 4 * PERIOD, "running"),  # unchanged: hourly
    }
    assert len(rows) == len(sent)
