"""Sending the Log Analytics rows the activities queued in the outbox (shared/azure/log_outbox.py).

The runs call ``send_log_rows`` after each batch and at their end (functions/durable.py); the timer
``send_log_outbox`` sends what an outage or a lost host left. The activity never raises: logging never
decides whether a run goes on.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df
import azure.functions as func
from pydantic import BaseModel, ConfigDict

from shared.azure.log_outbox import SendReport, log_outbox
from shared.settings import load_settings

bp = df.Blueprint()
log = logging.getLogger(__name__)


class SendInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempt: str  # names this call's claims in the outbox
    at: datetime


def utc_now() -> datetime:
    """The timer's clock (tests replace it with the local host's virtual clock)."""
    return datetime.now(UTC)


def send(request: SendInput, purge: bool = False) -> dict[str, Any]:
    """Send what waits; with ``purge``, also drop the tombstones past KEEP_SENT (the timer does)."""
    try:
        outbox = log_outbox(load_settings())
        report = outbox.send_pending(request.attempt, request.at)
        if purge:
            outbox.purge_sent(request.at)
    except Exception as error:  # noqa: BLE001 - storage away too: the rows wait, the run goes on
        report = SendReport(errors=[f"{type(error).__name__}: {error}"[:500]])
    if report.errors:
        log.warning("log outbox: %s", report.to_json())
    return report.to_json()


@bp.activity_trigger(input_name="request")
def send_log_rows(request: dict[str, Any]) -> dict[str, Any]:
    return send(SendInput.model_validate(request))


@bp.timer_trigger(schedule="%LOG_OUTBOX_SCHEDULE%", arg_name="timer", run_on_startup=False)
def send_log_outbox(timer: func.TimerRequest) -> None:
    send(SendInput(attempt=f"timer-{uuid.uuid4().hex}", at=utc_now()), purge=True)
