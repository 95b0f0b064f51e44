"""Durable plumbing shared by the blueprints: starting a run once, calling an activity with backoff, and
polling a long-running operation.

Starting: a scheduled run's instance id is derived from its schedule occurrence, so a late or
doubled timer firing finds it there and starts nothing.

Calling: ``RetryOptions`` retries at a fixed interval only; here the waits double (30 s, 60 s, ...), so a
throttled or briefly failing service gets room, and no retry is scheduled at or past a deadline.

Polling: a per-machine orchestrator starts an ARM operation through one activity and checks it
through another, on durable timers that grow, until it is done or its deadline passes.

Deterministic: time only from the orchestration context, waits only through durable timers, so the
same history gives the same timers.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.durable_functions as df
from pydantic import BaseModel

from shared.messages import PollingTuning
from shared.model.machines import machine_key
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


@dataclass(frozen=True)
class Polled:
    """How polling an operation ended: with the ``answer`` that ended it, at the deadline (``timed_out``),
    or with an activity that kept failing (``failing``: what failed and its last error). ``token`` is
    the operation's, once it started."""

    answer: Any = None
    timed_out: bool = False
    failing: str | None = None
    token: str | None = None


def poll_operation(
    context: df.DurableOrchestrationContext,
    start_activity: str,
    check_activity: str,
    request: BaseModel,
    *,
    done: Callable[[Any], bool],
    tuning: PollingTuning,
    deadline: datetime,
    subject: str,
) -> Generator[Any, Any, Polled]:
    """Start an operation, then check it with waits growing by ``POLL_GROWTH`` up to
    ``tuning.max_poll_seconds``, until a check's answer is ``done``, the deadline passes, or an
    activity still fails after ``tuning.max_attempts`` calls (see :func:`call_with_backoff`).

    Both activities get ``request`` with ``at`` (the orchestration's time at each call) and ``token``:
    none for the start, whose ``{"token": ...}`` answer is then given to every check. A start answer
    without a token (a permanent failure the activity recorded) ends the poll at once.
    """

    def call(activity: str, token: str | None) -> Generator[Any, Any, tuple[bool, Any]]:
        return (yield from call_with_backoff(
            context, activity,
            lambda: request.model_copy(update={"token": token, "at": context.current_utc_datetime})
            .model_dump(mode="json"),
            attempts=tuning.max_attempts, first_wait_seconds=tuning.backoff_seconds, deadline=deadline,
            subject=subject,
        ))  # fmt: skip

    ok, started = yield from call(start_activity, None)
    if not ok:
        return Polled(failing=f"{start_activity} kept failing: {started}")
    token = dict(started).get("token")
    if token is None:
        return Polled(answer=started)
    wait = float(tuning.poll_seconds)
    while True:
        now = context.current_utc_datetime
        if now >= deadline:
            return Polled(timed_out=True, token=token)
        yield context.create_timer(min(now + timedelta(seconds=wait), deadline))
        wait = min(wait * POLL_GROWTH, tuning.max_poll_seconds)
        ok, answer = yield from call(check_activity, token)
        if not ok:
            return Polled(failing=f"{check_activity} kept failing: {answer}", token=token)
        if done(answer):
            return Polled(answer=answer, token=token)


# The table activities of the runs only read and write Table Storage; a storage error that outlasts
# azure-core's own retries gets a few more chances before the run fails. Each such activity is idempotent.
STORAGE_RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=5_000, max_number_of_attempts=5)


def call_storage(context: df.DurableOrchestrationContext, activity: str, payload: Any) -> Any:
    """One of the runs' table activities, retried on failure (see ``STORAGE_RETRY``)."""
    return context.call_activity_with_retry(activity, STORAGE_RETRY, payload)


# The activity that uploads the Log Analytics rows waiting in the outbox (functions/log_outbox.py).
SEND_LOG_ROWS = "send_log_rows"


def send_log_rows(context: df.DurableOrchestrationContext) -> Any:
    """Send the rows the run's activities queued so far (after a batch, at the end). The activity never
    raises: an outage leaves the rows queued for the next call or the timer, and the run goes on."""
    return context.call_activity(SEND_LOG_ROWS, {
        "attempt": str(context.new_uuid()), "at": context.current_utc_datetime.isoformat(),
    })  # fmt: skip


def current_slot(schedule: str) -> str:
    """The occurrence of ``schedule`` this firing serves: late and doubled firings give the same id."""
    return slot_id(schedule, datetime.now(UTC))


async def runtime_status(client: df.DurableOrchestrationClient, instance_id: str) -> str | None:
    """The instance's Durable runtime status ("Running", "Terminated", ...); None when there is none."""
    found = await client.get_status(instance_id)
    return found.runtime_status.value if found and found.runtime_status is not None else None


async def start_once(
    client: df.DurableOrchestrationClient, orchestrator: str, instance_id: str, payload: Any
) -> bool:
    """Start ``orchestrator`` unless ``instance_id`` exists already; True when this call started it."""
    existing = await client.get_status(instance_id)
    if existing and existing.runtime_status is not None:
        return False
    await client.start_new(orchestrator, instance_id, payload)
    return True


# Instance ids other than the schedule slots' are built here. Azure refuses an id over 256 characters,
# with '/', '\\', '#', '?' or a control character, or starting with '@' (local/durable/limits.py);
# tests/unit/test_instance_ids.py checks every kind the product builds.


def adhoc_instance_id(prefix: str) -> str:
    """``{prefix}adhoc-{32 hex digits}``: a run started on request (by a starter, never an orchestrator)."""
    return f"{prefix}adhoc-{uuid.uuid4().hex}"


def batch_instance_id(run_id: str, batch: int) -> str:
    """``{run}-b{nnnnn}``: one batch sub-orchestration of a run."""
    return f"{run_id}-b{batch:05d}"


def group_instance_id(run_id: str, batch: int, group: int) -> str:
    """``{run}-b{nnnnn}-g{nnn}``: one group of machines of a batch (functions/assessment.py)."""
    return f"{batch_instance_id(run_id, batch)}-g{group:03d}"


def machine_instance_id(run_id: str, resource_id: str) -> str:
    """``{run}-{machine key}``: a run's sub-orchestration for one machine (a resource id holds '/')."""
    return f"{run_id}-{machine_key(resource_id)}"
