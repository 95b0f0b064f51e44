"""Starting scheduled runs exactly once per schedule occurrence."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df

from shared.timer_slots import slot_id


def current_slot(schedule: str) -> str:
    """The occurrence of ``schedule`` this firing serves: late and doubled firings give the same id."""
    return slot_id(schedule, datetime.now(UTC))


async def start_once(
    client: df.DurableOrchestrationClient, orchestrator: str, instance_id: str, payload: Any
) -> bool:
    """Start ``orchestrator`` unless ``instance_id`` exists already; True when this call started it."""
    existing = await client.get_status(instance_id)
    if existing and existing.runtime_status is not None:
        return False
    await client.start_new(orchestrator, instance_id, payload)
    return True
