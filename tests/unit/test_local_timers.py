"""The local host's timer trigger (local/timers.py), the app's clock (local/app_clock.py) and the clock a
state folder keeps (local/clock.py), without servers: a fake host records what fires on a virtual clock."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from local.app_clock import app_on_clock
from local.clock import VirtualClock, save_clock, saved_clock
from local.timers import Firing, TimerScheduler, next_occurrence, resolve_schedule

START = datetime(2026, 1, 13, 2, 0, 30, tzinfo=UTC)


class FakeHost:
    """The part of FunctionsHost the scheduler uses: its index of timers, and fire_timer."""

    def __init__(self, schedules: dict[str, str], slow: str | None = None) -> None:
        self.functions = {name: SimpleNamespace(schedule=s) for name, s in schedules.items()}
        self.calls: list[tuple[str, bool]] = []
        self.slow = slow
        self.release = threading.Event()

    def timers(self) -> list[str]:
        return sorted(self.functions)

    def fire_timer(self, name: str, *, past_due: bool = False) -> None:
        self.calls.append((name, past_due))
        if name == self.slow:
            self.release.wait(5)
        if name == "broken":
            raise RuntimeError("boom")


def _wait(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_schedule_named_by_an_app_setting_is_read_from_it_else_from_the_apps_default(monkeypatch):
    monkeypatch.setenv("LIGHT_CHECK_SCHEDULE", "0 */2 * * * *")
    assert resolve_schedule("%LIGHT_CHECK_SCHEDULE%") == "0 */2 * * * *"
    monkeypatch.delenv("RUN_RECONCILER_SCHEDULE", raising=False)
    assert resolve_schedule("%RUN_RECONCILER_SCHEDULE%") == "0 */15 * * * *"
    assert resolve_schedule("0 0 * * * *") == "0 0 * * * *"
    with pytest.raises(ValueError, match="NOT_A_SETTING"):
        resolve_schedule("%NOT_A_SETTING%")
    assert next_occurrence("0 */15 * * * *", START) == datetime(2026, 1, 13, 2, 15, tzinfo=UTC)


def test_every_timer_fires_at_each_occurrence_on_the_clock_and_is_reported():
    clock = VirtualClock(START)
    host = FakeHost({"every_minute": "0 * * * * *", "every_two": "0 */2 * * * *"})
    fired: list[Firing] = []
    scheduler = TimerScheduler(host, clock, on_fire=fired.append).start()  # type: ignore[arg-type]
    try:
        for minute in range(1, 5):
            clock.advance_to(START.replace(second=0) + timedelta(minutes=minute))
            _wait(lambda m=minute: sum(1 for f in fired if f.timer == "every_minute") == m)
        _wait(lambda: sum(1 for f in fired if f.timer == "every_two") == 2)
    finally:
        scheduler.stop()
    assert [f.due.minute for f in fired if f.timer == "every_two"] == [2, 4]
    assert not any(past_due for _, past_due in host.calls)


def test_a_stretch_of_missed_occurrences_is_one_past_due_call_and_a_failure_is_reported():
    clock = VirtualClock(START)
    host = FakeHost({"broken": "0 * * * * *"})
    fired: list[Firing] = []
    scheduler = TimerScheduler(host, clock, on_fire=fired.append).start()  # type: ignore[arg-type]
    try:
        clock.advance_to(START + timedelta(minutes=10))
        _wait(lambda: any(f.error for f in fired))
    finally:
        scheduler.stop()
    assert host.calls == [("broken", True)]
    assert fired[0].due == datetime(2026, 1, 13, 2, 1, tzinfo=UTC) and fired[0].past_due
    assert "boom" in (fired[1].error or "")


def test_a_slow_timer_delays_only_itself():
    clock = VirtualClock(START)
    host = FakeHost({"slow": "0 * * * * *", "quick": "0 * * * * *"}, slow="slow")
    scheduler = TimerScheduler(host, clock).start()  # type: ignore[arg-type]
    try:
        clock.advance_to(START + timedelta(seconds=30))
        _wait(lambda: ("quick", False) in host.calls and ("slow", False) in host.calls)
        clock.advance_to(START + timedelta(seconds=90))
        _wait(lambda: host.calls.count(("quick", False)) == 2)
        assert host.calls.count(("slow", False)) == 1  # still in its first call: never two at once
        host.release.set()
    finally:
        scheduler.stop()


def test_the_app_reads_now_from_the_hosts_clock_only_inside_the_block():
    import functions.deployments as deployments

    clock = VirtualClock(START)
    with app_on_clock(clock):
        assert deployments.utc_now() == START
        assert isinstance(datetime.now(UTC), deployments.datetime)  # real datetimes still pass
    assert abs(deployments.utc_now() - datetime.now(UTC)) < timedelta(minutes=1)  # back on the wall clock


def test_the_state_folder_keeps_the_clock_and_never_moves_it_back(tmp_path):
    assert saved_clock(tmp_path) is None
    save_clock(tmp_path, START, 60)
    save_clock(tmp_path, START - timedelta(hours=1), 30)
    kept = saved_clock(tmp_path)
    assert kept is not None and kept.now == START and kept.speed == 30
