"""The deployment scheduler: which occurrences are due or missed, and the runs it records for them.

The timer (``functions/deployments.py``) calls :func:`collect_due_runs`, starts each due run once
through the Durable client, then :func:`mark_checked`. An occurrence is looked at by the first
firing after it: a doubled firing finds the run already there (one instance id per occurrence), and
a firing after an outage finds the occurrence due or missed, never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from shared.deployments.definition import NAME_PATTERN, DeploymentDefinition
from shared.deployments.definitions_table import StoredDeployment
from shared.deployments.rollout import Window
from shared.deployments.runs_table import RunState, RunStore
from shared.deployments.schedule import Schedule, occurrences, require_aware

log = logging.getLogger(__name__)

# Every deployment run's instance id starts so (scheduled and ad-hoc alike); /api/runs follows them.
RUN_PREFIX = "deploy-"
# Instance ids are stored as Azure Storage table keys (no '/', '\\', '#', '?', AZURE-FACTS);
# NAME_PATTERN keeps deployment names to 64 safe characters, so an id stays under 100.
INSTANCE_ID_TIME_FORMAT = "%Y%m%dT%H%MZ"
MAX_INSTANCE_ID_LENGTH = 100
# The scheduler looks back at most this far after an outage: older occurrences are long missed,
# and listing them all would make one late firing slow.
MAX_SCHEDULER_LOOKBACK = timedelta(days=7)
# The first firing ever looks back this far.
FIRST_LOOKBACK = timedelta(minutes=1)


class OccurrenceState(StrEnum):
    DUE = "due"
    MISSED = "missed"


@dataclass(frozen=True)
class Occurrence:
    at: datetime
    state: OccurrenceState


def due_occurrences(schedule: Schedule, last_checked: datetime, now: datetime,
                    window_minutes: int) -> list[Occurrence]:
    """Occurrences in ``(last_checked, now]``, each ``due`` or ``missed``.

    Rule: an occurrence is due while ``now`` is at or before the moment one update (15 minutes,
    no reboot) still fits in its window, i.e. ``now <= at + window - 15 min``; later it is missed,
    recorded as such and never run outside its window. After a timer outage the older occurrences
    come back missed and the latest may still be due.
    """
    require_aware(last_checked, "last_checked")
    require_aware(now, "now")
    if last_checked > now:
        raise ValueError(
            f"last_checked ({last_checked.isoformat()}) must not be after now ({now.isoformat()})"
        )
    found = []
    for at in occurrences(schedule, last_checked, now):
        cutoff = Window(at, window_minutes).cutoff_for(1, has_service_pack=False, may_reboot=False)
        state = OccurrenceState.DUE if now <= cutoff else OccurrenceState.MISSED
        found.append(Occurrence(at, state))
    return found


def occurrence_instance_id(deployment_name: str, occurrence_at: datetime) -> str:
    """``deploy-{name}-{yyyymmddThhmmZ}``: one Durable instance per occurrence, so a doubled or late
    timer finds the run already there instead of starting it twice."""
    if not NAME_PATTERN.match(deployment_name):
        raise ValueError(f"deployment_name {deployment_name!r} is not a valid deployment name")
    require_aware(occurrence_at, "occurrence_at")
    instance_id = f"{RUN_PREFIX}{deployment_name}-{occurrence_at.astimezone(UTC):{INSTANCE_ID_TIME_FORMAT}}"
    assert len(instance_id) <= MAX_INSTANCE_ID_LENGTH
    return instance_id


@dataclass(frozen=True)
class DueRun:
    """A run the scheduler recorded for a due occurrence; the timer starts it."""

    run_id: str
    definition: DeploymentDefinition


def look_since(last_checked: datetime, now: datetime) -> datetime:
    """Where this firing starts looking: after the last one, but never further back than the lookback."""
    return max(last_checked, now - MAX_SCHEDULER_LOOKBACK)


def record_occurrences(runs: RunStore, deployments: Iterable[StoredDeployment], since: datetime,
                       now: datetime) -> list[DueRun]:
    """Record a run for each occurrence in ``(since, now]`` of each deployment: ``missed`` ones as
    such, due ones queued and returned to be started. One broken deployment does not keep the
    others from running (it is logged and left for the next firing to try again)."""
    due: list[DueRun] = []
    for stored in deployments:
        try:
            due.extend(_record(runs, stored, since, now))
        except Exception:
            log.exception("deployment %s: could not record its due occurrences", stored.definition.name)
    return due


def _record(runs: RunStore, stored: StoredDeployment, since: datetime, now: datetime) -> list[DueRun]:
    definition = stored.definition
    # An occurrence before the deployment existed was never due.
    start = max(since, stored.created)
    if start >= now:
        return []
    due = []
    for occurrence in due_occurrences(definition.schedule, start, now, definition.maintenance_window_minutes):
        run_id = occurrence_instance_id(definition.name, occurrence.at)
        if occurrence.state is OccurrenceState.MISSED:
            reason = ("the scheduler did not run while the occurrence could still start "
                      f"(checked at {now:%Y-%m-%d %H:%M:%S} UTC)")
            runs.create_run(run_id, definition, "schedule", now, occurrence=occurrence.at,
                            state=RunState.MISSED, reason=reason)
            continue
        runs.create_run(run_id, definition, "schedule", now, occurrence=occurrence.at,
                        members=stored.frozen_members)
        due.append(DueRun(run_id, definition))
    return due
