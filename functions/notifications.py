"""Sending the notifications a failed send left in the outbox (shared/governance/notifications.py).

``notify`` sends a notification when it is raised; the timer ``send_notifications`` sends again what
Event Grid or the webhook refused or did not answer. It never raises: a channel being away only delays.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import azure.durable_functions as df
import azure.functions as func

from shared.governance.notifications import SendReport, notification_outbox
from shared.settings import load_settings

bp = df.Blueprint()
log = logging.getLogger(__name__)


def utc_now() -> datetime:
    """The timer's clock (tests replace it with the local host's virtual clock)."""
    return datetime.now(UTC)


def send_waiting(attempt: str, at: datetime) -> SendReport:
    try:
        report = notification_outbox(load_settings()).send_pending(attempt, at)
    except Exception as error:  # noqa: BLE001 - storage away too: the notifications wait
        report = SendReport(errors=[f"{type(error).__name__}: {error}"[:500]])
    if report.errors:
        log.warning("notification outbox: %s", report.to_json())
    return report


@bp.timer_trigger(schedule="%NOTIFICATION_OUTBOX_SCHEDULE%", arg_name="timer", run_on_startup=False)
def send_notifications(timer: func.TimerRequest) -> None:
    send_waiting(f"timer-{uuid.uuid4().hex}", utc_now())
