"""Ring-run notifications: ``PatchManagement.RingRun.Started`` when a run of a deployment that targets an
asset category (``targets.categories``, with or without a ring) has resolved its machines, and
``.Finished`` or ``.Failed`` when it ends. A run with no category target sends nothing.

Called from the activities only (``resolve_deployment_run``, ``complete_deployment_run``) and from the
reconciler's timer when it closes a lost run: :func:`shared.governance.notifications.notify` writes a
table and sends, which an orchestrator may not do. Each decision is made from the run's row as stored
(never from the activity's input alone), so a retried activity, or the reconciler after the
orchestration, decides the same and raises the same dedup key ``RingRun.{Started|Finished|Failed}|{runId}``:
published once.

The Failed rule (:func:`failure_reason`): the run failed (could not resolve its targets, the approval
rule refused it at its start, or it was lost and closed by the reconciler), it stopped on its error
budget, or any of its machines failed: status ``failed`` or ``partially succeeded``, the statuses the
error budget counts (an update failed on the machine). A machine not reachable, skipped, cancelled or out
of window did not fail an install: it shows in ``results``, and the run is Finished.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.azure.tables import join_property
from shared.deployments.definition import DeploymentDefinition
from shared.deployments.results import MachineResultStatus
from shared.deployments.rollout import REASON_ERROR_BUDGET, REASON_HEALTH_GATE
from shared.deployments.runs_table import BUDGET_STATUSES, RunRecord, RunState, run_store
from shared.governance.notifications import (
    MAX_LISTED_UPDATES,
    EventType,
    Notification,
    NotificationError,
    notify,
)
from shared.governance.patch_refs import ref_of_row
from shared.settings import Settings

log = logging.getLogger(__name__)

# Where an install step keeps its UpdateRunProgress_CL rows on the machine's run row (shared.deployments.steps
# ``progress_prefix``; read here by name so this module does not import the steps and their SDK clients).
INSTALL_STEPS = ("install1", "install2")
# The run states in which a run has ended (MISSED never started: nothing to tell).
ENDED_STATES = frozenset({RunState.COMPLETED, RunState.CANCELLED, RunState.FAILED})
# The run states in which a run has resolved its machines and started.
STARTED_STATES = frozenset({RunState.RUNNING, RunState.COMPLETED, RunState.CANCELLED})


@dataclass(frozen=True)
class RingScope:
    """What category ring(s) a run is on: ``category`` when it targets one category, ``ring`` when one
    ring of it; ``rings`` every category target as ``category/ring`` (``category`` alone: all its rings)."""

    category: str | None
    ring: str | None
    rings: tuple[str, ...]
    release: str | None

    def data(self) -> dict[str, Any]:
        return {"category": self.category, "ring": self.ring, "rings": list(self.rings),
                "release": self.release}


def ring_scope(definition: DeploymentDefinition) -> RingScope | None:
    """The run's category targets; None when it has none (a run not on a category ring notifies nothing)."""
    targets = definition.targets.categories or []
    if not targets:
        return None
    rings = tuple(dict.fromkeys(f"{t.category}/{t.ring}" if t.ring else t.category for t in targets))
    one_category = len({t.category.lower() for t in targets}) == 1
    one_ring = len(rings) == 1 and targets[0].ring is not None
    return RingScope(category=targets[0].category if one_category else None,
                     ring=targets[0].ring if one_ring else None, rings=rings, release=definition.release)


def failed_machines(counts: Mapping[str, int]) -> int:
    """Machines where an update failed (the error budget's statuses)."""
    return sum(int(counts.get(status.value, 0)) for status in BUDGET_STATUSES)


def failure_reason(run: RunRecord) -> str | None:
    """Why the ring run failed, or None when it finished (see the module docstring for the rule)."""
    if run.state is RunState.FAILED:
        return run.error or "the run failed"
    reasons = []
    if run.stop_reason in (REASON_ERROR_BUDGET, REASON_HEALTH_GATE):
        reasons.append(f"stopped: {run.stop_reason} (no further machine was started)")
    failed = failed_machines(run.counts)
    if failed:
        reasons.append(f"{failed} of {run.targets} machines failed")
    return "; ".join(reasons) or None


def _subject(run: RunRecord) -> str:
    return f"/deployments/{run.deployment_name}/runs/{run.run_id}"


def _dedup(event_type: EventType, run: RunRecord) -> str:
    return f"{event_type.value.removeprefix('PatchManagement.')}|{run.run_id}"


def _counts(run: RunRecord) -> dict[str, Any]:
    return {"machines": run.targets, "succeeded": int(run.counts.get(MachineResultStatus.SUCCEEDED.value, 0)),
            "failed": failed_machines(run.counts),
            "results": {status.value: int(run.counts.get(status.value, 0)) for status in MachineResultStatus}}


def _notification(event_type: EventType, run: RunRecord, data: Mapping[str, Any]) -> Notification:
    return Notification(event_type, _subject(run), {k: v for k, v in data.items() if v not in (None, [])},
                        _dedup(event_type, run))


def started_notification(run: RunRecord, at: datetime) -> Notification | None:
    """After the run's resolve: Started for a ring run that resolved and started, Failed for one that
    could not start; None for a run not on a category ring (or not resolved yet)."""
    scope = ring_scope(run.definition)
    if scope is None:
        return None
    if run.state is RunState.FAILED:
        return ended_notification(run, at)
    if run.state not in STARTED_STATES:
        return None
    return _notification(EventType.RING_RUN_STARTED, run, {
        "deployment": run.deployment_name, "runId": run.run_id, "machines": run.targets, "startedAt": at,
        **scope.data()})  # fmt: skip


def ended_notification(run: RunRecord, at: datetime,
                       failed_updates: Iterable[Mapping[str, Any]] = ()) -> Notification | None:
    """Finished or Failed for an ended ring run (:func:`failure_reason`); None for a run not on a category
    ring or not ended. ``failed_updates``: from :func:`failed_updates_of`."""
    scope = ring_scope(run.definition)
    if scope is None or run.state not in ENDED_STATES:
        return None
    ended_at = run.finished or at
    reason = failure_reason(run)
    common = {"deployment": run.deployment_name, "runId": run.run_id, **_counts(run),
              "status": run.state.value, "failedUpdates": list(failed_updates), **scope.data()}
    if reason is None:
        return _notification(EventType.RING_RUN_FINISHED, run, {**common, "finishedAt": ended_at})
    return _notification(EventType.RING_RUN_FAILED, run, {**common, "reason": reason, "failedAt": ended_at})


def failed_updates_of(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The updates that failed on the machines of ``rows`` (run machine rows), from the
    ``UpdateRunProgress_CL`` rows each install step kept on its row: ``{osType, key, machines}``, the
    most failed first, at most :data:`MAX_LISTED_UPDATES`. ``key`` is the exact version's key
    (``KB5034441``, ``openssl=3.0.2-0ubuntu1.12``), else the package name or title the row gives."""
    machines: Counter[tuple[str, str]] = Counter()
    for row in rows:
        failed: set[tuple[str, str]] = set()
        for step in INSTALL_STEPS:
            prefix = f"Progress_{step}_"
            if f"{prefix}Parts" not in row:
                continue
            for progress in json.loads(join_property(row, prefix)):
                if str(progress.get("InstallationStatus") or "").lower() != "failed":
                    continue
                os_type = str(progress.get("OSType") or "")
                try:
                    ref = ref_of_row(os_type, progress)
                except ValueError:
                    ref = None
                key = ref.key if ref else str(progress.get("KBID") or progress.get("PackageName")
                                              or progress.get("Title") or "")
                if os_type and key:
                    failed.add((os_type, key))
        machines.update(failed)
    ranked = sorted(machines.items(), key=lambda item: (-item[1], item[0]))
    return [{"osType": os_type, "key": key, "machines": count}
            for (os_type, key), count in ranked[:MAX_LISTED_UPDATES]]


# --- the activities' calls ------------------------------------------------------------------------------


def notify_run_resolved(settings: Settings, run_id: str, at: datetime) -> bool:
    """After ``resolve``: Started (or Failed, when the run could not start) for a ring run, once. Returns
    whether a notification was new. Raises only when the notification outbox cannot be written (the
    activity is retried, and the retry notifies: the run's row is its input, not the resolve's answer)."""
    run = run_store(settings).get_run(run_id)
    return _send(settings, lambda: started_notification(run, at), at)


def notify_run_ended(settings: Settings, run: RunRecord, at: datetime) -> bool:
    """When the run is closed (completed, cancelled, failed): Finished or Failed for a ring run, once.
    Reads the failed machines' rows only when some failed, for the updates that failed on them."""
    if ring_scope(run.definition) is None or run.state not in ENDED_STATES:
        return False
    failed_rows: list[dict[str, Any]] = []
    if failed_machines(run.counts):
        failed_rows = run_store(settings).machines_in_states(run.run_id, [s.value for s in BUDGET_STATUSES])
    return _send(settings, lambda: ended_notification(run, at, failed_updates_of(failed_rows)), at)


def _send(settings: Settings, make: Callable[[], Notification | None], at: datetime) -> bool:
    try:
        notification = make()
    except NotificationError as error:  # a value the schema refuses: the run goes on, the log says why
        log.error("no ring-run notification: %s", error)
        return False
    if notification is None:
        return False
    return notify(settings, notification, at)
