"""The bake between a category's rings (issue 14): a run on a ring waits until the previous ring's latest
run has baked for the category's ``safety.ringBakeHours`` with no health failure.

For each ``(category, ring)`` a run targets, with the ring not the category's first and the category's
policy asking for a ring bake, the previous ring's latest run is found among the deployments that target
exactly that ring (the newest run of each, the latest by its end):

- none has run: nothing to wait for (the bake guards a ring from what the one before it showed);
- it has not ended, or ended less than ``ringBakeHours`` ago: the run waits until the bake ends
  (``wait_until``), within its maintenance window; a bake that ends too late for the window refuses the
  run with the reason (the next occurrence tries again);
- it ended with a health failure (a machine rolled back, or failed its checks): the run is refused, naming
  that run; the ring stays closed until a later run of the previous ring ends healthy and bakes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.deployments.definition import DeploymentDefinition
from shared.deployments.definitions_table import deployment_store
from shared.deployments.results import MachineResultStatus
from shared.deployments.runs_table import RunRecord, RunState, run_store
from shared.governance.categories_table import category_store
from shared.settings import Settings

# A run still needs this much of its window after the bake for one update to go in (rollout's
# MINUTES_PER_UPDATE and a reboot): waiting past it would only record every machine "window closing".
MIN_WINDOW_LEFT = timedelta(minutes=30)
_ENDED = (RunState.COMPLETED, RunState.CANCELLED)


@dataclass(frozen=True)
class RingGate:
    """``refused``: why the run may not start; ``wait_until``: when it may; neither: now."""

    refused: str | None = None
    wait_until: datetime | None = None


def _previous_rings(settings: Settings, definition: DeploymentDefinition) -> list[tuple[str, str, str, int]]:
    """(category, ring, previous ring, bake hours) for each ring target that has a bake to wait for."""
    if not definition.targets.categories:
        return []
    categories = {c.name.lower(): c for c in category_store(settings).categories()}
    found = []
    for target in definition.targets.categories:
        category = categories.get(target.category.lower())
        if category is None or target.ring is None or category.safety is None:
            continue
        hours = category.safety.ring_bake_hours
        names = [r.name.lower() for r in category.rings]
        index = names.index(target.ring.lower()) if target.ring.lower() in names else 0
        if hours and index > 0:
            found.append((category.name, category.rings[index].name, category.rings[index - 1].name, hours))
    return found


def _latest_run_on(settings: Settings, category: str, ring: str, excluding: str) -> RunRecord | None:
    """The newest run of the deployments that target exactly (category, ring)."""
    store = run_store(settings)
    runs = []
    for stored in deployment_store(settings).list():
        targets = stored.definition.targets.categories or []
        if stored.definition.name.lower() == excluding.lower():
            continue
        if any(t.category.lower() == category.lower() and (t.ring or "").lower() == ring.lower()
               for t in targets):
            run = store.latest(stored.definition.name)
            if run is not None and run.state is not RunState.MISSED:
                runs.append(run)
    return max(runs, key=lambda r: r.finished or r.created, default=None)


def _health_failures(run: RunRecord) -> int:
    return run.health_failed + run.counts.get(MachineResultStatus.ROLLED_BACK.value, 0)


def ring_gate(settings: Settings, run_id: str, now: datetime) -> RingGate:
    """Whether the run may start now, must wait, or is refused (the module docstring's rules)."""
    run = run_store(settings).get_run(run_id)
    wait_until: datetime | None = None
    for category, ring, previous, hours in _previous_rings(settings, run.definition):
        last = _latest_run_on(settings, category, previous, excluding=run.deployment_name)
        if last is None:
            continue
        if last.state is RunState.FAILED:
            return RingGate(refused=f"ring {previous!r} of {category!r} did not run (run {last.run_id} "
                                    f"failed: {last.error or 'no reason'}); ring {ring!r} waits for it to "
                                    "run healthy")
        failures = _health_failures(last)
        if failures:
            return RingGate(refused=f"ring {previous!r} of {category!r} failed its health gate in run "
                                    f"{last.run_id} ({failures} machine(s) rolled back or unhealthy); ring "
                                    f"{ring!r} waits for a healthy run of {previous!r}")
        if last.state not in _ENDED or last.finished is None:
            return RingGate(refused=f"ring {previous!r} of {category!r} is still running (run "
                                    f"{last.run_id}); ring {ring!r} starts after it ends and bakes {hours} h")
        baked = last.finished + timedelta(hours=hours)
        if baked > now:
            wait_until = max(wait_until or baked, baked)
    if wait_until is None:
        return RingGate()
    if run.window_start is not None:
        latest_start = run.window_start + timedelta(minutes=run.window_minutes) - MIN_WINDOW_LEFT
        if wait_until > latest_start:
            return RingGate(refused=f"the previous ring bakes until {wait_until:%Y-%m-%d %H:%M} UTC, too "
                                    "late for this run's window; the next occurrence starts after the bake")
    return RingGate(wait_until=wait_until)
