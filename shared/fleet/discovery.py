"""Discovery: list a subscription's machines, keep them in the inventory, queue their Log Analytics rows."""

from __future__ import annotations

from collections import Counter

from shared.azure.arm import list_fleet
from shared.azure.credentials import credential_for
from shared.azure.log_outbox import log_outbox
from shared.azure.tables import table_service
from shared.fleet.heartbeats import LastHeartbeat, heartbeats_to_send
from shared.fleet.machines_table import MachineInventory
from shared.fleet.messages import DiscoveryCounts, SubscriptionDiscoveryInput
from shared.fleet.placement import Placer, placement_properties
from shared.log_tables import HEARTBEAT
from shared.model.machines import Support
from shared.settings import Settings


def discover_subscription(
    settings: Settings, request: SubscriptionDiscoveryInput, place: Placer | None = None
) -> DiscoveryCounts:
    """Idempotent: the inventory is upserted by machine key, and heartbeat rows carry a
    record id derived from the run and the machine, which the outbox keeps once, so a retried activity
    changes nothing. A machine's heartbeat goes at most hourly unless its row changed (heartbeats.py).
    ``place`` gives each machine's asset category and ring, written on its entity and heartbeat row."""
    credential = credential_for(settings)
    machines, failed = list_fleet(credential, settings.arm_endpoint, [request.subscription_id])
    if failed:
        return DiscoveryCounts(subscriptions_failed=tuple(failed))
    inventory = MachineInventory(table_service(settings))
    inventory.ensure()
    at = request.observed_at
    last: dict[str, LastHeartbeat] = {}  # a partition query per subscription listed (usually one)
    for subscription_id in sorted({m.subscription_id for m in machines}):
        last |= inventory.last_heartbeats(subscription_id)
    placements = place(machines) if place is not None else {}
    rows, sent = heartbeats_to_send(machines, at, request.run_id, last, placements)
    # Rows queued first: if the inventory write then fails, the retry finds no record of them and queues
    # them again (same RecordIds), rather than finding them recorded as sent and never sending them.
    log_outbox(settings, credential).put(HEARTBEAT, rows, at)
    extra = {m.key: sent.get(m.key, {}) | placement_properties(placements[m.key])
             for m in machines if m.key in placements}
    inventory.record(machines, at, sent | extra)
    return DiscoveryCounts(
        machines=len(machines),
        heartbeats=len(rows),
        by_os=dict(Counter(m.os_type.value for m in machines)),
        by_environment=dict(Counter(m.environment.value for m in machines)),
        by_power_state=dict(Counter(m.power_state.value for m in machines)),
        not_reachable=sum(1 for m in machines if m.reachable_reason),
        assessment_only=sum(1 for m in machines if m.support.support is Support.ASSESSMENT_ONLY),
        unsupported=sum(1 for m in machines if m.support.support is Support.UNSUPPORTED),
    )
