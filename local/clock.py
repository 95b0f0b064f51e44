"""The clock shared by every local stand-in.

The Durable runner, the ARM stand-in and the simulated fleet read time from one
clock object. With :class:`VirtualClock` nothing moves until the runner advances
it (to the next durable timer when all other work is idle), so a six-hour
maintenance window passes in milliseconds. :class:`ScaledClock` is wall time sped up, for
``python -m local serve`` when a person wants to watch things happen; :class:`RealClock` is wall time.

A state folder keeps its clock (``clock.json``: where the last command's clock stopped, and its speed), so
``serve`` goes on from where ``make run`` stopped, and what one command wrote is current for the next.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    """What every stand-in needs from time."""

    virtual: bool

    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        ...

    def sleep_until(self, moment: datetime, timeout: float) -> None:
        """Block the caller until ``moment`` or ``timeout`` real seconds, whichever first."""
        ...


class VirtualClock:
    """Time that moves only when :meth:`advance_to` or :meth:`advance` is called."""

    virtual = True

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 1, 13, 2, 0, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("VirtualClock start must be timezone-aware")
        self._now = start.astimezone(UTC)
        self._changed = threading.Condition()

    def now(self) -> datetime:
        with self._changed:
            return self._now

    def advance_to(self, moment: datetime) -> None:
        """Move time forward to ``moment``; a moment in the past is ignored (time never runs back)."""
        with self._changed:
            if moment > self._now:
                self._now = moment.astimezone(UTC)
                self._changed.notify_all()

    def advance(self, delta: timedelta) -> None:
        if delta < timedelta(0):
            raise ValueError("a clock cannot be moved backwards")
        with self._changed:
            self._now = self._now + delta
            self._changed.notify_all()

    def sleep_until(self, moment: datetime, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._now >= moment, timeout=timeout)


class RealClock:
    """Wall-clock time."""

    virtual = False

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep_until(self, moment: datetime, timeout: float) -> None:
        remaining = (moment - self.now()).total_seconds()
        if remaining > 0:
            time.sleep(min(remaining, timeout))


class ScaledClock:
    """Wall time sped up ``speed`` times from ``start``: two processes built from the same three numbers
    (``to_json``) read the same time, so a host process and the Azure stand-ins of another process agree on
    when an operation ends or a timer fires, and a host killed and started again finds time has moved on."""

    virtual = False

    def __init__(self, start: datetime, speed: float, wall_start: float | None = None) -> None:
        if start.tzinfo is None or speed <= 0:
            raise ValueError("ScaledClock needs a timezone-aware start and a positive speed")
        self.start = start.astimezone(UTC)
        self.speed = speed
        self.wall_start = time.time() if wall_start is None else wall_start

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.time() - self.wall_start) * self.speed)

    def sleep_until(self, moment: datetime, timeout: float) -> None:
        remaining = (moment - self.now()).total_seconds() / self.speed
        if remaining > 0:
            time.sleep(min(remaining, timeout))

    def to_json(self) -> dict[str, object]:
        return {"start": self.start.isoformat(), "speed": self.speed, "wallStart": self.wall_start}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ScaledClock:
        return cls(datetime.fromisoformat(str(data["start"])), float(str(data["speed"])),
                   float(str(data["wallStart"])))


# --- one clock across commands ---------------------------------------------------------------------

CLOCK_FILE = "clock.json"  # in the state folder: where the last command's clock stopped, and its speed
# ``serve``'s default: a 2-hour maintenance window passes in two minutes.
DEFAULT_SPEED = 60.0


@dataclass(frozen=True)
class SavedClock:
    now: datetime
    speed: float


def saved_clock(state_dir: Path) -> SavedClock | None:
    """The clock a previous command on ``state_dir`` left, or None on a new (or pre-clock) folder."""
    path = state_dir / CLOCK_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return SavedClock(datetime.fromisoformat(data["now"]).astimezone(UTC), float(data["speed"]))


def save_clock(state_dir: Path, now: datetime, speed: float) -> None:
    """Keep where the clock is, so the next command on the folder goes on from there (never back).
    Written to a temporary file and renamed, so a command killed mid-write leaves the last good one."""
    previous = saved_clock(state_dir) if (state_dir / CLOCK_FILE).exists() else None
    if previous is not None and previous.now > now:
        now = previous.now
    state_dir.mkdir(parents=True, exist_ok=True)
    temporary = state_dir / (CLOCK_FILE + ".tmp")
    temporary.write_text(json.dumps({"now": now.astimezone(UTC).isoformat(), "speed": speed}))
    os.replace(temporary, state_dir / CLOCK_FILE)
