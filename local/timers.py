"""The Functions host's timer trigger, on the local clock: every timer function of the app fires on its
NCRONTAB schedule, as the host fires it in Azure.

The timers come from the app's function index (``FunctionsHost.functions``), so a timer added to a
blueprint fires here with no change. A schedule written ``%NAME%`` is read from the app setting NAME (the
host resolves it the same way), falling back to the default the app declares in shared/settings.py. A
firing that comes after the next occurrence is already due (the clock ran fast, or the machine was busy)
is one call with ``past_due`` set, as the host makes one call for a missed stretch, not one per occurrence.
Timers fire side by side, each in its own thread, but one timer's calls never overlap (the host holds a
lock per timer function): a slow one is late only for itself.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from croniter import croniter

from local.clock import Clock
from local.functions_host import FunctionsHost
from shared.settings import SETTINGS

log = logging.getLogger(__name__)

_DEFAULTS = {spec.name: spec.default for spec in SETTINGS if spec.default is not None}
# How long the scheduler sleeps at most between looks at the clock (real seconds), so stop() is prompt.
_POLL_SECONDS = 0.25


def resolve_schedule(schedule: str) -> str:
    """``%NAME%`` -> the app setting NAME (or the app's default for it); anything else as written."""
    if schedule.startswith("%") and schedule.endswith("%") and len(schedule) > 2:
        name = schedule[1:-1]
        value = os.environ.get(name) or _DEFAULTS.get(name)
        if not value:
            raise ValueError(f"the timer schedule {schedule} names app setting {name}, which is not set")
        return value
    return schedule


def next_occurrence(ncrontab: str, after: datetime) -> datetime:
    """The first occurrence of ``ncrontab`` strictly after ``after`` (UTC; NCRONTAB puts seconds first)."""
    found: datetime = croniter(ncrontab, after.astimezone(UTC), second_at_beginning=True).get_next(datetime)
    return found.astimezone(UTC)


@dataclass(frozen=True)
class Firing:
    timer: str
    schedule: str
    due: datetime  # the occurrence this firing serves
    at: datetime  # the clock when it fired (or, with ``error``, when it failed)
    past_due: bool
    error: str | None = None  # set on a second report, when the call failed


@dataclass
class _Timer:
    name: str
    schedule: str
    due: datetime
    firing: threading.Thread | None = None  # the call under way: a timer never runs twice at once

    def busy(self) -> bool:
        return self.firing is not None and self.firing.is_alive()


class TimerScheduler:
    """Fires the app's timers on ``clock`` in a background thread; ``on_fire`` hears of each firing."""

    def __init__(self, functions: FunctionsHost, clock: Clock,
                 on_fire: Callable[[Firing], None] | None = None) -> None:
        self._functions = functions
        self._clock = clock
        self._on_fire = on_fire or (lambda firing: None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        now = clock.now()
        self.timers = [
            _Timer(name, schedule, next_occurrence(schedule, now))
            for name, schedule in sorted(
                (name, resolve_schedule(functions.functions[name].schedule or ""))
                for name in functions.timers()
            )
        ]

    def start(self) -> TimerScheduler:
        self._thread = threading.Thread(target=self._loop, name="timers", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for timer in self.timers:
            if timer.firing is not None:
                timer.firing.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.timers:
                self._stop.wait(_POLL_SECONDS)
                continue
            now = self._clock.now()
            due = [t for t in self.timers if t.due <= now and not t.busy()]
            if not due:
                waiting = [t.due for t in self.timers if not t.busy()]
                if waiting:
                    self._clock.sleep_until(min(waiting), _POLL_SECONDS)
                else:
                    self._stop.wait(_POLL_SECONDS)
                continue
            for timer in due:
                past_due = now >= next_occurrence(timer.schedule, timer.due)
                fired_for = timer.due
                timer.due = next_occurrence(timer.schedule, now)
                timer.firing = threading.Thread(target=self._fire, args=(timer, fired_for, now, past_due),
                                                name=f"timer-{timer.name}", daemon=True)
                timer.firing.start()

    def _fire(self, timer: _Timer, due: datetime, now: datetime, past_due: bool) -> None:
        firing = Firing(timer.name, timer.schedule, due, now, past_due)
        self._on_fire(firing)
        try:
            self._functions.fire_timer(timer.name, past_due=past_due)
        except Exception as failure:  # logged, as the host logs it; the timer fires again at its next time
            log.exception("timer %s failed", timer.name)
            self._on_fire(replace(firing, at=self._clock.now(), error=f"{type(failure).__name__}: {failure}"))
