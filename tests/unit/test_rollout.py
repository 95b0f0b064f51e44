"""Rollout rules: window cut-offs and install durations, the start gate, due and missed occurrences."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.deployments.definition import Rollout
from shared.deployments.rollout import (
    MAX_INSTALL_DURATION,
    REASON_CANCELLED,
    REASON_ERROR_BUDGET,
    REASON_NOTHING_PENDING,
    REASON_WINDOW_CLOSING,
    REASON_WINDOW_NOT_OPEN,
    Decision,
    RolloutState,
    Window,
    iso_duration,
    may_reboot,
    next_to_start,
    rollout_finished,
)
from shared.deployments.schedule import Schedule
from shared.deployments.scheduler import OccurrenceState, due_occurrences, occurrence_instance_id

T0 = datetime(2026, 1, 16, 1, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# --- window arithmetic -------------------------------------------------------------------------


def test_cutoff_keeps_one_update_and_a_reboot_before_the_end() -> None:
    window = Window(T0, 120)
    assert window.end == at(120)
    assert window.cutoff_for(5, has_service_pack=False, may_reboot=True) == at(120 - 15 - 10)
    assert window.cutoff_for(5, has_service_pack=False, may_reboot=False) == at(120 - 15)
    assert window.cutoff_for(5, has_service_pack=True, may_reboot=True) == at(120 - 20 - 10)
    assert window.cutoff_for(1, has_service_pack=True, may_reboot=False) == at(120 - 20)


def test_can_start_until_the_cutoff_and_not_a_minute_after() -> None:
    window = Window(T0, 60)
    assert window.can_start(at(35), 3).ok
    late = window.can_start(at(36), 3)
    assert (late.ok, late.reason) == (False, REASON_WINDOW_CLOSING)
    assert window.can_start(at(36), 3, may_reboot=False).ok  # no reboot to keep time for
    assert window.can_start(at(31), 3, has_service_pack=True).reason == REASON_WINDOW_CLOSING
    assert window.can_start(at(-1), 3).reason == REASON_WINDOW_NOT_OPEN
    assert window.can_start(at(0), 0).reason == REASON_NOTHING_PENDING


def test_updates_that_fit_shrink_as_the_window_runs_out() -> None:
    window = Window(T0, 60)  # 50 minutes after the reboot reserve: three 15-minute updates
    assert window.updates_that_fit(at(0), 10) == 3
    assert window.updates_that_fit(at(0), 2) == 2
    assert window.updates_that_fit(at(0), 10, has_service_pack=True) == 3  # 20 + 15 + 15
    assert window.updates_that_fit(at(30), 10) == 1
    assert window.updates_that_fit(at(40), 10) == 0


def test_install_duration_is_capped_at_3h55m_in_a_6_hour_window_and_shrinks() -> None:
    window = Window(T0, 360)
    assert window.install_duration(at(0)) == MAX_INSTALL_DURATION == timedelta(hours=3, minutes=55)
    assert iso_duration(window.install_duration(at(0))) == "PT3H55M"
    assert window.install_duration(at(120)) == MAX_INSTALL_DURATION  # 4 h left, still capped
    assert window.install_duration(at(300)) == timedelta(minutes=60)
    assert iso_duration(window.install_duration(at(300))) == "PT1H0M"
    assert window.install_duration(at(400)) == timedelta(0)  # never negative
    assert window.time_left(at(-30)) == timedelta(minutes=360)  # not open yet: the whole window


def test_window_rejects_naive_times_and_empty_windows() -> None:
    with pytest.raises(ValueError, match="start must be an aware datetime"):
        Window(datetime(2026, 1, 1), 60)
    with pytest.raises(ValueError, match="minutes must be positive"):
        Window(T0, 0)
    with pytest.raises(ValueError, match="now must be an aware datetime"):
        Window(T0, 60).time_left(datetime(2026, 1, 1))


def test_reboot_setting_never_keeps_no_reboot_time() -> None:
    assert not may_reboot("Never")
    assert all(may_reboot(setting) for setting in ("IfRequired", "Always", "RebootOnly"))


# --- the rollout gate, driven as the master orchestration will drive it ------------------------


@dataclass
class Run:
    """A stand-in master loop: asks the gate, starts machines, completes the oldest one per step."""

    rollout: Rollout
    window: Window
    outcomes: dict[str, str]
    step_minutes: int = 5
    now: datetime = T0
    started: list[str] = field(default_factory=list)
    not_started: dict[str, str] = field(default_factory=dict)
    peak_running: int = 0

    def go(self, cancel_after: int | None = None) -> None:
        queue = deque(self.outcomes)
        running: deque[str] = deque()
        succeeded = failed = completions = 0
        while True:
            state = RolloutState(len(self.outcomes), len(self.started), len(running), succeeded, failed,
                                 cancelled=cancel_after is not None and completions >= cancel_after)
            decision = next_to_start(state, self.rollout, self.window, self.now, list(queue))
            for name in decision.start:
                queue.popleft()
                running.append(name)
                self.started.append(name)
            for name in decision.not_started:
                self.not_started[name] = str(decision.stop_reason)
            if decision.stopped:
                queue.clear()
            self.peak_running = max(self.peak_running, len(running))
            if rollout_finished(RolloutState(state.total, len(self.started), len(running), succeeded, failed),
                                decision, list(queue)):
                return
            self.now += timedelta(minutes=self.step_minutes)
            if running:
                done = running.popleft()
                completions += 1
                if self.outcomes[done] == "failed":
                    failed += 1
                else:
                    succeeded += 1


def machines(count: int, failing: tuple[int, ...] = ()) -> dict[str, str]:
    return {f"vm{i:02}": "failed" if i in failing else "succeeded" for i in range(count)}


def test_an_error_budget_of_2_stops_after_the_second_failed_machine() -> None:
    run = Run(Rollout(max_concurrent=1, error_budget=2), Window(T0, 360), machines(8, failing=(1, 3, 5)))
    run.go()
    assert run.started == ["vm00", "vm01", "vm02", "vm03"]
    assert run.not_started == {name: REASON_ERROR_BUDGET for name in ("vm04", "vm05", "vm06", "vm07")}


def test_the_error_budget_allows_one_failure_less_than_its_value() -> None:
    run = Run(Rollout(max_concurrent=1, error_budget=2), Window(T0, 360), machines(4, failing=(0,)))
    run.go()
    assert run.started == ["vm00", "vm01", "vm02", "vm03"]
    assert run.not_started == {}


def test_percentages_resolve_against_the_machine_count() -> None:
    # 10% of 25 machines is 2.5: rounded up to 3 at once, and the third failure stops the rollout.
    rollout = Rollout(max_concurrent="10%", error_budget="10%")
    first = next_to_start(RolloutState(25), rollout, Window(T0, 360), T0, [f"m{i}" for i in range(25)])
    assert len(first.start) == 3
    two_failed = RolloutState(25, started=5, running=3, failed=2)
    assert not next_to_start(two_failed, rollout, Window(T0, 360), T0, ["m5"]).stopped
    three_failed = RolloutState(25, started=6, running=3, failed=3)
    stopped = next_to_start(three_failed, rollout, Window(T0, 360), T0, ["m6"])
    assert stopped.stop_reason == REASON_ERROR_BUDGET


@pytest.mark.parametrize("max_concurrent", [1, 3, "20%"])
def test_concurrency_is_never_exceeded(max_concurrent: Any) -> None:
    rollout = Rollout(max_concurrent=max_concurrent)
    run = Run(rollout, Window(T0, 360), machines(20), step_minutes=1)
    run.go()
    assert len(run.started) == 20
    assert run.peak_running == rollout.concurrency(20)


def test_a_full_batch_waits_without_stopping() -> None:
    decision = next_to_start(RolloutState(10, started=2, running=2), Rollout(max_concurrent=2),
                             Window(T0, 360), T0, [f"m{i}" for i in range(2, 10)])
    assert decision == Decision()


def test_a_closing_window_stops_new_starts_while_running_machines_continue() -> None:
    window = Window(T0, 60)  # cutoff at 35 minutes: one update and a reboot
    rollout = Rollout(max_concurrent=2)
    state = RolloutState(6, started=4, running=2, succeeded=2)
    one_free = RolloutState(6, started=4, running=1, succeeded=3)
    assert next_to_start(one_free, rollout, window, at(35), ["m4", "m5"]).start == ("m4",)
    closing = next_to_start(state, rollout, window, at(36), ["m4", "m5"])
    assert closing.start == ()
    assert (closing.stop_reason, closing.not_started) == (REASON_WINDOW_CLOSING, ("m4", "m5"))
    assert not rollout_finished(state, closing, [])  # the two running machines are still awaited
    assert rollout_finished(RolloutState(6, started=4, succeeded=4), closing, [])


def test_a_window_too_short_starts_no_machine_after_the_cutoff() -> None:
    run = Run(Rollout(max_concurrent=1), Window(T0, 30), machines(5), step_minutes=4)
    run.go()
    assert run.started == ["vm00", "vm01"]  # started at 0 and 4 minutes; the cutoff is at 5
    assert run.not_started == {"vm02": REASON_WINDOW_CLOSING, "vm03": REASON_WINDOW_CLOSING,
                               "vm04": REASON_WINDOW_CLOSING}


def test_cancelling_records_the_rest_as_cancelled() -> None:
    run = Run(Rollout(max_concurrent=2), Window(T0, 360), machines(6))
    run.go(cancel_after=1)
    assert run.started == ["vm00", "vm01"]
    assert run.not_started == {name: REASON_CANCELLED for name in ("vm02", "vm03", "vm04", "vm05")}


def test_cancellation_wins_over_a_spent_budget() -> None:
    state = RolloutState(4, started=2, failed=2, cancelled=True)
    decision = next_to_start(state, Rollout(error_budget=1), Window(T0, 360), T0, ["m2", "m3"])
    assert decision.stop_reason == REASON_CANCELLED


def test_inconsistent_counts_are_rejected_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="started"):
        RolloutState(2, started=3)
    with pytest.raises(ValueError, match="failed"):
        RolloutState(2, started=1, failed=2)
    with pytest.raises(ValueError, match="queue"):
        next_to_start(RolloutState(2, started=1), Rollout(), Window(T0, 60), T0, ["a", "b"])


# --- scheduler decisions -------------------------------------------------------------------------


def berlin_daily() -> Schedule:
    return Schedule.model_validate({"startTime": "2026-01-01T02:00:00", "timeZone": "Europe/Berlin",
                                    "recurrence": {"frequency": "Day"}})


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_a_timer_outage_across_spring_forward_marks_old_occurrences_missed_and_the_latest_due() -> None:
    # 02:00 Berlin does not exist on 29 March 2026: the engine runs it at 03:00 CEST (01:00 UTC).
    found = due_occurrences(berlin_daily(), utc("2026-03-27T12:00"), utc("2026-03-30T00:30"), 120)
    assert [(o.at, o.state) for o in found] == [
        (utc("2026-03-28T01:00"), OccurrenceState.MISSED),
        (utc("2026-03-29T01:00"), OccurrenceState.MISSED),
        (utc("2026-03-30T00:00"), OccurrenceState.DUE),  # 02:00 CEST
    ]


def test_due_until_one_update_no_longer_fits_then_missed() -> None:
    # 25 October 2026 (fall back): 02:00 Berlin is taken in summer time, 00:00 UTC; window 60 minutes.
    schedule = berlin_daily()
    last_checked = utc("2026-10-24T23:00")
    on_time, late = (due_occurrences(schedule, last_checked, utc(now), 60) for now in
                     ("2026-10-25T00:45", "2026-10-25T00:46"))
    assert [(o.at, o.state) for o in on_time] == [(utc("2026-10-25T00:00"), OccurrenceState.DUE)]
    assert [(o.at, o.state) for o in late] == [(utc("2026-10-25T00:00"), OccurrenceState.MISSED)]
    assert due_occurrences(schedule, last_checked, utc("2026-10-24T23:59"), 60) == []


def test_the_second_tuesday_plus_3_schedule_is_due_at_its_berlin_time() -> None:
    schedule = Schedule.model_validate({
        "startTime": "2026-01-01T02:00:00", "timeZone": "Europe/Berlin",
        "recurrence": {"frequency": "Month",
                       "monthlyOccurrence": {"day": "Tuesday", "occurrence": 2, "offsetDays": 3}}})
    # April 2026: second Tuesday the 14th, + 3 = Friday the 17th, 02:00 CEST = 00:00 UTC.
    found = due_occurrences(schedule, utc("2026-04-16T23:59"), utc("2026-04-17T00:01"), 120)
    assert [(o.at, o.state) for o in found] == [(utc("2026-04-17T00:00"), OccurrenceState.DUE)]


def test_due_occurrences_refuses_a_check_that_goes_backwards() -> None:
    with pytest.raises(ValueError, match="last_checked"):
        due_occurrences(berlin_daily(), utc("2026-01-02T00:00"), utc("2026-01-01T00:00"), 60)


def test_instance_ids_are_stable_and_distinct_per_occurrence() -> None:
    first = utc("2026-03-29T01:00")
    expected = "deploy-Patch-Tuesday.servers_1-20260329T0100Z"
    assert occurrence_instance_id("Patch-Tuesday.servers_1", first) == expected
    same_instant = datetime.fromisoformat("2026-03-29T03:00+02:00")
    assert occurrence_instance_id("web", first) == occurrence_instance_id("web", same_instant)
    assert occurrence_instance_id("web", first) != occurrence_instance_id("web", first + timedelta(days=1))
    assert occurrence_instance_id("web", first) != occurrence_instance_id("db", first)
    assert len(occurrence_instance_id("a" * 64, first)) <= 100


def test_instance_ids_refuse_unsafe_names_and_naive_times() -> None:
    with pytest.raises(ValueError, match="deployment_name"):
        occurrence_instance_id("web/prod", utc("2026-01-01T00:00"))
    with pytest.raises(ValueError, match="occurrence_at"):
        occurrence_instance_id("web", datetime(2026, 1, 1))
