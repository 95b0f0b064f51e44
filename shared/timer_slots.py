"""Timer schedule slots: which scheduled occurrence a timer firing belongs to.

Timers can fire late (``past_due``) and, after a failover, twice (AZURE-FACTS, timers).
Naming a run after the occurrence it serves, not after the minute it happened to start,
makes a late or doubled firing find the run already there. NCRONTAB puts seconds first;
croniter evaluates it with ``second_at_beginning``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from croniter import croniter

# A firing a moment early (clock skew between workers) still belongs to the slot it was for.
SLOT_SKEW_TOLERANCE = timedelta(seconds=5)
SLOT_FORMAT = "%Y%m%dT%H%M%S"


def schedule_slot(ncrontab: str, fired_at: datetime) -> datetime:
    """The latest occurrence of ``ncrontab`` at or before ``fired_at`` (UTC, as Functions timers run)."""
    moment = fired_at.astimezone(UTC) + SLOT_SKEW_TOLERANCE
    occurrence: datetime = croniter(ncrontab, moment, second_at_beginning=True).get_prev(datetime)
    return occurrence.astimezone(UTC)


def slot_id(ncrontab: str, fired_at: datetime) -> str:
    return schedule_slot(ncrontab, fired_at).strftime(SLOT_FORMAT)


def is_valid_ncrontab(expression: str) -> bool:
    return croniter.is_valid(expression, second_at_beginning=True)
