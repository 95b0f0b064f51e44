"""The rollout rules of an update deployment: window arithmetic and the start gate.

Pure decisions with no I/O and no clock reads: every function takes ``now``, so the orchestrations
can call them with ``context.current_utc_datetime`` and replay to the same answer.

Window rule (documented once, here). Legacy Update Management starts an update only while about
15 minutes of the window are left, 20 for a service pack, and keeps 10 minutes for a reboot
(AZURE-FACTS, "Maintenance windows and limits"). Updates that do not fit stay pending and the
machine ends as "window exceeded". So a machine may *start* while its first update plus its reboot
still fit; requiring all its updates to fit would keep a machine with 25 pending updates out of
even a 6-hour window. :meth:`Window.updates_that_fit` says how many are expected to make it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.deployments.definition import Rollout
from shared.deployments.schedule import require_aware

# Legacy Update Management needs about this much of the window left before it starts an update,
# a service pack, or a reboot (AZURE-FACTS, "Maintenance windows and limits").
MINUTES_PER_UPDATE = 15
MINUTES_PER_SERVICE_PACK = 20
MINUTES_FOR_REBOOT = 10
# installPatches accepts a maximumDuration of at most PT3H55M per call (Azure VM installPatches API;
# the same 3 h 55 min is Azure Update Manager's longest window, AZURE-FACTS).
MAX_INSTALL_DURATION = timedelta(hours=3, minutes=55)

# Why a machine did not start: recorded as each such machine's reason by the master orchestration.
REASON_ERROR_BUDGET = "error budget spent"
# The error budget was spent and health checks failed on at least one machine (shared.safety): the
# machines not started are recorded "skipped: health gate".
REASON_HEALTH_GATE = "health gate"
REASON_WINDOW_CLOSING = "window closing"
REASON_CANCELLED = "cancelled"
REASON_WINDOW_NOT_OPEN = "window not open"
REASON_NOTHING_PENDING = "no pending updates"
REASON_OK = "ok"

# Reboot settings (DeploymentDefinition.reboot_setting) under which no reboot time must be kept.
_NO_REBOOT_SETTINGS = frozenset({"Never"})


def may_reboot(reboot_setting: str) -> bool:
    """Whether a deployment's reboot setting can reboot a machine, so reboot time must be kept."""
    return reboot_setting not in _NO_REBOOT_SETTINGS


def iso_duration(duration: timedelta) -> str:
    """``PT3H55M``: the ISO 8601 form installPatches' ``maximumDuration`` takes (whole minutes)."""
    minutes = max(0, int(duration.total_seconds()) // 60)
    hours, minutes = divmod(minutes, 60)
    return f"PT{hours}H{minutes}M"


@dataclass(frozen=True)
class StartDecision:
    ok: bool
    reason: str


@dataclass(frozen=True)
class Window:
    """A maintenance window: ``minutes`` long from ``start`` (aware)."""

    start: datetime
    minutes: int

    def __post_init__(self) -> None:
        require_aware(self.start, "start")
        if self.minutes <= 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")

    @property
    def end(self) -> datetime:
        return self.start + timedelta(minutes=self.minutes)

    def cutoff_for(self, updates: int, has_service_pack: bool = False, may_reboot: bool = True) -> datetime:
        """The latest moment a machine with ``updates`` pending may still start (see the module rule).

        A pending service pack is budgeted as the first item, since it needs the most time.
        With nothing pending the cutoff is the window's end: there is nothing to fit.
        """
        if updates < 0:
            raise ValueError(f"updates must be >= 0, got {updates}")
        needed = 0
        if updates:
            needed += MINUTES_PER_SERVICE_PACK if has_service_pack else MINUTES_PER_UPDATE
        if updates and may_reboot:
            needed += MINUTES_FOR_REBOOT
        return self.end - timedelta(minutes=needed)

    def time_left(self, now: datetime) -> timedelta:
        """Time until the end, never negative and never more than the window (before it opens)."""
        require_aware(now, "now")
        left = self.end - max(now, self.start)
        return max(left, timedelta(0))

    def install_duration(self, now: datetime) -> timedelta:
        """The ``maximumDuration`` of an install started at ``now``: what is left, capped per call."""
        return min(self.time_left(now), MAX_INSTALL_DURATION)

    def updates_that_fit(self, now: datetime, updates: int, has_service_pack: bool = False,
                         may_reboot: bool = True) -> int:
        """How many of ``updates`` can start before their cutoff if started at ``now``, one after another."""
        left = self.time_left(now) - timedelta(minutes=MINUTES_FOR_REBOOT if may_reboot else 0)
        minutes = int(left.total_seconds() // 60)
        if has_service_pack and updates:
            if minutes < MINUTES_PER_SERVICE_PACK:
                return 0
            return 1 + min(updates - 1, (minutes - MINUTES_PER_SERVICE_PACK) // MINUTES_PER_UPDATE)
        return max(0, min(updates, minutes // MINUTES_PER_UPDATE))

    def can_start(self, now: datetime, pending_updates: int, has_service_pack: bool = False,
                  may_reboot: bool = True) -> StartDecision:
        """Whether a machine may start installing at ``now``, and if not, the reason to record."""
        require_aware(now, "now")
        if pending_updates == 0:
            return StartDecision(False, REASON_NOTHING_PENDING)
        if now < self.start:
            return StartDecision(False, REASON_WINDOW_NOT_OPEN)
        if now > self.cutoff_for(pending_updates, has_service_pack, may_reboot):
            return StartDecision(False, REASON_WINDOW_CLOSING)
        return StartDecision(True, REASON_OK)


@dataclass(frozen=True)
class RolloutState:
    """Counts the master orchestration keeps. ``failed`` counts results charged to the error budget
    (failed machines); not-reachable or not-needed machines finish without counting against it."""

    total: int
    started: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: bool = False
    # Of ``failed``, the machines whose health checks failed after their install (rolled back or not).
    health_failed: int = 0

    def __post_init__(self) -> None:
        for name in ("total", "started", "running", "succeeded", "failed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.started > self.total:
            raise ValueError(f"started ({self.started}) must not exceed total ({self.total})")
        if self.running + self.succeeded + self.failed > self.started:
            raise ValueError(
                f"running + succeeded + failed ({self.running + self.succeeded + self.failed}) "
                f"must not exceed started ({self.started})"
            )


@dataclass(frozen=True)
class Decision:
    """Which queued machines start now; once ``stop_reason`` is set, no queued machine ever starts
    and each one in ``not_started`` is recorded with that reason. Running machines are not touched."""

    start: tuple[str, ...] = ()
    stop_reason: str | None = None
    not_started: tuple[str, ...] = ()

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None


def _stop_reason(state: RolloutState, rollout: Rollout, window: Window, now: datetime,
                 reboot: bool) -> str | None:
    if state.cancelled:
        return REASON_CANCELLED
    if state.failed >= rollout.failures_allowed(state.total):
        return REASON_HEALTH_GATE if state.health_failed else REASON_ERROR_BUDGET
    # The master does not know each machine's pending count before its pre-scan: one update is the
    # least any machine with work needs, so past that cutoff no machine can do anything useful.
    if now > window.cutoff_for(1, has_service_pack=False, may_reboot=reboot):
        return REASON_WINDOW_CLOSING
    return None


def next_to_start(state: RolloutState, rollout: Rollout, window: Window, now: datetime,
                  queue: Sequence[str], reboot: bool = True) -> Decision:
    """The gate the master orchestration calls at its start and after each machine completes.

    Checks, in order: cancelled, error budget spent (``failed >= Rollout.failures_allowed``),
    window closing; otherwise starts as many queued machines as the concurrency limit leaves room
    for. Machines already running may still fail after the budget is spent, as with AWS MaxErrors.
    """
    require_aware(now, "now")
    if len(queue) > state.total - state.started:
        raise ValueError(
            f"queue ({len(queue)}) must not exceed total - started ({state.total - state.started})"
        )
    if not queue:
        return Decision()
    reason = _stop_reason(state, rollout, window, now, reboot)
    if reason is not None:
        return Decision(stop_reason=reason, not_started=tuple(queue))
    if now < window.start:
        return Decision()
    room = max(0, rollout.concurrency(state.total) - state.running)
    return Decision(start=tuple(queue[:room]))


def rollout_finished(state: RolloutState, decision: Decision, queue: Sequence[str]) -> bool:
    """True once nothing runs and nothing more will start: a stopped rollout still waits for its
    running machines."""
    return state.running == 0 and (decision.stopped or not queue)


__all__ = [
    "MAX_INSTALL_DURATION",
    "MINUTES_FOR_REBOOT",
    "MINUTES_PER_SERVICE_PACK",
    "MINUTES_PER_UPDATE",
    "REASON_CANCELLED",
    "REASON_ERROR_BUDGET",
    "REASON_HEALTH_GATE",
    "REASON_NOTHING_PENDING",
    "REASON_OK",
    "REASON_WINDOW_CLOSING",
    "REASON_WINDOW_NOT_OPEN",
    "Decision",
    "RolloutState",
    "StartDecision",
    "Window",
    "iso_duration",
    "may_reboot",
    "next_to_start",
    "rollout_finished",
]
