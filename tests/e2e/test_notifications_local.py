"""Notifications in the whole local product: the local host's settings point the app at the Event Grid
topic stand-in and the webhook receiver, and the host's ``send_notifications`` timer sends what a refused
send left, once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from local.arm.fleet import parse_fleet
from local.clock import VirtualClock
from local.stack import LocalStack
from shared.azure.event_grid import PUBLISH_RETRIES
from shared.governance.notifications import EventType, Notification, notify
from shared.settings import load_settings

pytestmark = pytest.mark.e2e

SUB = "66666666-6666-4666-8666-666666666666"
FLEET = parse_fleet({"subscriptions": [{"id": SUB}], "machines": [
    {"subscription": SUB, "resourceGroup": "rg", "name": "vm-01", "kind": "azure-vm",
     "location": "westeurope", "osType": "Linux", "osName": "ubuntu", "osVersion": "22.04",
     "availableUpdates": ["openssl"]},
]})  # fmt: skip


def run_failed(run_id: str, at: datetime) -> Notification:
    return Notification(EventType.RING_RUN_FAILED, f"/deployments/web/runs/{run_id}",
                        {"deployment": "web", "runId": run_id, "reason": "window closed", "failedAt": at},
                        f"RingRun.Failed|{run_id}")


def test_the_local_host_publishes_notifications_to_its_stand_ins():
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    with LocalStack(FLEET, clock=VirtualClock(start)).start() as stack:
        assert stack.events and stack.webhook and stack.functions
        settings = load_settings()  # what the app reads: the local host's settings
        assert settings.event_grid_topic_endpoint == stack.events.endpoint
        assert settings.notification_webhook_url == stack.webhook.url

        assert notify(settings, run_failed("run-1", start))
        assert [e["type"] for e in stack.events.events] == ["PatchManagement.RingRun.Failed"]
        assert [d["event"]["id"] for d in stack.webhook.deliveries] == [stack.events.events[0]["id"]]
        assert stack.webhook.bad_signatures == 0

        stack.events.refuse_next(calls=PUBLISH_RETRIES + 1)
        assert notify(settings, run_failed("run-2", start))
        assert len(stack.events.events) == 1
        stack.functions.fire_timer("send_notifications")
        stack.functions.fire_timer("send_notifications")
        assert [e["data"]["runId"] for e in stack.events.events] == ["run-1", "run-2"]
        assert [d["event"]["data"]["runId"] for d in stack.webhook.deliveries] == ["run-1", "run-2"]
