"""The Heartbeat_CL row of a discovered machine, what the workbook's fleet views and alerts read, and
when discovery sends it: at most once an hour, unless something in the row changed.

Discovery runs every 15 minutes; a row per machine per run was 96 rows and about 75 KB a day for a
machine whose state never changes (issue 12). Readers want each machine's latest state (``arg_max``
over a window of a day or more, the workbook over its time range), which an hourly row still gives.
A change (power state, OS, tags, patch mode, anything in the row) is sent by the discovery that sees
it. The decision needs no extra request per machine: the Machines entity discovery writes anyway
keeps when its last heartbeat went (``LastHeartbeatAt``) and a fingerprint of that row's content
(``HeartbeatFingerprint``); discovery reads them back with one partition query per subscription.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.fleet.placement import ASSET_CATEGORY, RING, MachinePlacement
from shared.log_tables import HEARTBEAT, record_id
from shared.model.machines import Machine

# An unchanged machine's heartbeat goes at most this often. An hour keeps every machine in any view of
# the last two hours or more (the workbook's shortest range is 4 hours) at a quarter of the rows.
HEARTBEAT_INTERVAL = timedelta(hours=1)
# A discovery's time is its orchestration's start, a moment after its timer slot, so the run one hour
# after the last heartbeat can be seconds short of the hour; without this slack it would wait for the
# next run and an unchanged machine would report every 75 minutes. Well under the 15-minute period.
HEARTBEAT_SLACK = timedelta(minutes=1)
# The Machines entity's properties that remember the last heartbeat sent.
LAST_HEARTBEAT_AT = "LastHeartbeatAt"
HEARTBEAT_FINGERPRINT = "HeartbeatFingerprint"
# Columns that differ on every row whatever the machine does: left out of the fingerprint.
_PER_ROW_COLUMNS = frozenset({"TimeGenerated", "RecordId"})


@dataclass(frozen=True)
class LastHeartbeat:
    """What the Machines entity remembers of the machine's last heartbeat."""

    at: datetime
    fingerprint: str


def heartbeat_row(
    machine: Machine, observed_at: datetime, run_id: str, placement: MachinePlacement | None = None
) -> dict[str, Any]:
    """The row; ``placement`` is the machine's asset category and ring (empty when not placed yet)."""
    category, ring = placement or ("", None)
    return {
        "TimeGenerated": observed_at,
        "RecordId": record_id(HEARTBEAT.name, run_id, machine.resource_id),
        "Computer": machine.computer_name,
        "SourceComputerId": machine.key,
        "ResourceId": machine.resource_id,
        "SubscriptionId": machine.subscription_id,
        "ResourceGroup": machine.resource_group,
        "ResourceLocation": machine.location,
        "ResourceProvider": (
            "Microsoft.Compute" if machine.environment.value == "Azure" else "Microsoft.HybridCompute"
        ),
        "ComputerEnvironment": machine.environment.value,
        "OSType": machine.os_type.value,
        "OSName": machine.os_name,
        "OSVersion": machine.os_version,
        "PowerState": machine.power_state.value,
        "PatchMode": machine.patch_mode,
        "Category": "Azure VM" if machine.environment.value == "Azure" else "Arc-enabled server",
        "Solutions": "updates",
        "Tags": dict(machine.tags),
        ASSET_CATEGORY: category,
        RING: ring or "",
    }


def heartbeat_fingerprint(row: dict[str, Any]) -> str:
    """A short digest of what the row says about the machine (not when, not its id)."""
    content = {k: v for k, v in row.items() if k not in _PER_ROW_COLUMNS}
    text = json.dumps(content, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def heartbeat_due(row: dict[str, Any], observed_at: datetime, last: LastHeartbeat | None) -> bool:
    """Send ``row``? Yes for a machine never sent, one whose row changed, one whose last heartbeat is an
    interval old, and again for the discovery that sent the last one (a retried activity: the row has
    the same RecordId, which the outbox keeps once)."""
    if last is None or last.fingerprint != heartbeat_fingerprint(row) or last.at == observed_at:
        return True
    return observed_at - last.at >= HEARTBEAT_INTERVAL - HEARTBEAT_SLACK


def heartbeat_properties(row: dict[str, Any], observed_at: datetime) -> dict[str, Any]:
    """What the Machines entity keeps of a heartbeat sent (read back by the next discovery)."""
    return {LAST_HEARTBEAT_AT: observed_at, HEARTBEAT_FINGERPRINT: heartbeat_fingerprint(row)}


def last_heartbeat(entity: dict[str, Any]) -> LastHeartbeat | None:
    """The last heartbeat a Machines entity remembers; None before the first."""
    at, fingerprint = entity.get(LAST_HEARTBEAT_AT), entity.get(HEARTBEAT_FINGERPRINT)
    if not isinstance(at, datetime) or not fingerprint:
        return None
    return LastHeartbeat(at, str(fingerprint))


def heartbeats_to_send(
    machines: Iterable[Machine], observed_at: datetime, run_id: str, last: Mapping[str, LastHeartbeat],
    placements: Mapping[str, MachinePlacement] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The rows a discovery sends, and the Machines properties (by machine key) that remember them.
    ``last``: each machine's last heartbeat, by machine key, as the Machines table keeps it;
    ``placements``: each machine's asset category and ring, by machine key (a change sends the row)."""
    rows: list[dict[str, Any]] = []
    sent: dict[str, dict[str, Any]] = {}
    placements = placements or {}
    for machine in machines:
        row = heartbeat_row(machine, observed_at, run_id, placements.get(machine.key))
        if heartbeat_due(row, observed_at, last.get(machine.key)):
            rows.append(row)
            sent[machine.key] = heartbeat_properties(row, observed_at)
    return rows, sent
