"""Discovery: list a subscription's machines, keep them in the inventory, queue their Log Analytics rows."""

from __future__ import annotations

from collections import Counter

from shared.azure.arm import list_fleet
from shared.azure.credentials import credential_for
from shared.azure.log_outbox import log_outbox
from shared.azure.tables import table_service
from shared.fleet.heartbeats import heartbeat_row
from shared.fleet.machines_table import MachineInventory
from shared.fleet.messages import DiscoveryCounts, SubscriptionDiscoveryInput
from shared.log_tables import HEARTBEAT
from shared.model.machines import Support
from shared.settings import Settings


def discover_subscription(settings: Settings, request: SubscriptionDiscoveryInput) -> DiscoveryCounts:
    """Idempotent: the inventory is upserted by machine key, and heartbeat rows carry a
    record id derived from the run and the machine, which the outbox keeps once, so a retried activity
    changes nothing."""
    credential = credential_for(settings)
    machines, failed = list_fleet(credential, settings.arm_endpoint, [request.subscription_id])
    if failed:
        return DiscoveryCounts(subscriptions_failed=tuple(failed))
    inventory = MachineInventory(table_service(settings))
    inventory.ensure()
    inventory.record(machines, request.observed_at)
    rows = [heartbeat_row(m, request.observed_at, request.run_id) for m in machines]
    log_outbox(settings, credential).put(HEARTBEAT, rows, request.observed_at)
    return DiscoveryCounts(
        machines=len(machines),
        by_os=dict(Counter(m.os_type.value for m in machines)),
        by_environment=dict(Counter(m.environment.value for m in machines)),
        by_power_state=dict(Counter(m.power_state.value for m in machines)),
        not_reachable=sum(1 for m in machines if m.reachable_reason),
        assessment_only=sum(1 for m in machines if m.support.support is Support.ASSESSMENT_ONLY),
        unsupported=sum(1 for m in machines if m.support.support is Support.UNSUPPORTED),
    )
