"""The Heartbeat_CL row of a discovered machine: what the workbook's fleet views and alerts read."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.log_tables import HEARTBEAT, record_id
from shared.model.machines import Machine


def heartbeat_row(machine: Machine, observed_at: datetime, run_id: str) -> dict[str, Any]:
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
    }
