"""Durable plumbing shared by the blueprints: starting a run once, and calling an activity with backoff.

Starting: a scheduled run's instance id is derived from its schedule occurrence, so a late or
doubled timer firing finds it there and starts nothing.

Calling: ``RetryOptions`` retries at a fixed interval only; here the waits double (30 s, 60 s, ...), so a
throttled or briefly failing service gets room, and no retry is scheduled at or past a deadline.
Deterministic: the same history gives the same timers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.durable_functions as df

from shared.timer_slots import slot_id

log = logging.getLogger(__name__)

BACKOFF_GROWTH = 2
# Checks of a long-running operation wait 1.5 times longer each time, up to the tuning's maximum:
# a quick operation is seen soon, a slow one does not spend the ARM read budget (AZURE-FACTS).
POLL_GROWTH = 1.5


def call_with_backoff(
    context: df.DurableOrchestrationContext,
    activity: str,
    payload: Callable[[], Any],
    *,
    attempts: int,
    first_wait_seconds: float,
    deadline: datetime,
    subject: str,
) -> Generator[Any, Any, tuple[bool, Any]]:
    """``(True, result)``, or ``(False, last error text)`` once ``attempts`` calls failed or the next
    one would come at or after ``deadline``. ``payload`` is built again for each attempt (it may
    carry the orchestration's current time); ``subject`` names what the call is about in the log."""
    wait = first_wait_seconds
    last_error = ""
    for attempt in range(1, attempts + 1):
        try:
            return True, (yield context.call_activity(activity, payload()))
        except Exception as error:  # noqa: BLE001 - the activities raise only what is worth retrying
            last_error = str(error)
            retry_at = context.current_utc_datetime + timedelta(seconds=wait)
            if attempt == attempts or retry_at >= deadline:
                break
            if not context.is_replaying:
                log.warning("%s for %s failed (attempt %d), retrying at %s: %s",
                            activity, subject, attempt, retry_at, last_error)
            yield context.create_timer(retry_at)
            wait *= BACKOFF_GROWTH
    return False, last_error


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
