"""Deployment schedules: wall-clock occurrences across DST, month rules, and field-named validation."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from shared.deployments.schedule import Schedule, next_occurrence, occurrences

BERLIN = ZoneInfo("Europe/Berlin")
YEAR_2026 = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


def schedule(start: str, recurrence: dict[str, Any] | None = None, **extra: Any) -> Schedule:
    payload: dict[str, Any] = {"startTime": start, "timeZone": extra.pop("timeZone", "Europe/Berlin")}
    if recurrence is not None:
        payload["recurrence"] = recurrence
    return Schedule.model_validate(payload | extra)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local(instant: datetime) -> datetime:
    return instant.astimezone(BERLIN).replace(tzinfo=None)


def second_tuesday_plus_3(year: int, month: int) -> date:
    """From the calendar alone: the Tuesdays of the month are the non-zero Tuesday cells of its weeks."""
    tuesdays = [
        week[calendar.TUESDAY] for week in calendar.monthcalendar(year, month) if week[calendar.TUESDAY]
    ]
    return date(year, month, tuesdays[1]) + timedelta(days=3)


# -- the done-when: second Tuesday + 3 days, 02:00 Europe/Berlin, for a year ---------------------------


def test_patch_tuesday_plus_three_gives_the_twelve_right_dates_at_two_local_across_both_dst_changes():
    plan = schedule(
        "2026-01-01T02:00:00",
        {"frequency": "Month", "monthlyOccurrence": {"day": "Tuesday", "occurrence": 2, "offsetDays": 3}},
    )

    runs = list(occurrences(plan, *YEAR_2026))

    assert [local(run).date() for run in runs] == [
        second_tuesday_plus_3(2026, month) for month in range(1, 13)
    ]
    assert all(local(run).time().hour == 2 and local(run).minute == 0 for run in runs)
    # CET (UTC+1) before 2026-03-29 and after 2026-10-25, CEST (UTC+2) between.
    summer = (datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC))
    assert [run.hour for run in runs] == [0 if summer[0] <= run < summer[1] else 1 for run in runs]
    assert [run.hour for run in runs] == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert all(run.tzinfo is UTC for run in runs)


def test_an_offset_that_crosses_the_month_end_stays_with_the_month_of_its_weekday():
    # Last Tuesday of January 2026 is the 27th; + 6 days is 2 February, then 24 February + 6 is 2 March.
    plan = schedule(
        "2026-01-01T02:00:00",
        {"frequency": "Month", "monthlyOccurrence": {"day": "Tuesday", "occurrence": -1, "offsetDays": 6}},
    )

    runs = [local(run).date() for run in occurrences(plan, utc(2026, 1, 1), utc(2027, 1, 5))]

    assert runs[:3] == [date(2026, 2, 2), date(2026, 3, 2), date(2026, 4, 6)]
    assert runs[-1] == date(2027, 1, 4)  # December's last Tuesday, the 29th, + 6
    assert len(runs) == 12  # one per month of the weekday, none doubled or lost


# -- weekly, daily, monthly, hourly -------------------------------------------------------------------


def test_weekly_on_tuesday_and_thursday_every_second_week():
    plan = schedule(
        "2026-01-06T03:00:00", {"frequency": "Week", "interval": 2, "weekDays": ["Thursday", "Tuesday"]}
    )

    runs = [local(run) for run in occurrences(plan, utc(2026, 1, 1), utc(2026, 2, 6))]

    days = [
        date(2026, 1, 6),
        date(2026, 1, 8),
        date(2026, 1, 20),
        date(2026, 1, 22),
        date(2026, 2, 3),
        date(2026, 2, 5),
    ]
    assert runs == [datetime.combine(day, datetime.min.time()).replace(hour=3) for day in days]


def test_weekly_never_runs_before_its_start_even_in_the_first_week():
    plan = schedule(
        "2026-01-08T03:00:00", {"frequency": "Week", "interval": 2, "weekDays": ["Tuesday", "Thursday"]}
    )

    runs = [local(run).date() for run in occurrences(plan, utc(2026, 1, 1), utc(2026, 1, 31))]

    assert runs == [date(2026, 1, 8), date(2026, 1, 20), date(2026, 1, 22)]


def test_daily_at_a_time_the_spring_forward_gap_skips_runs_an_hour_later_that_day():
    plan = schedule("2026-03-27T02:30:00", {"frequency": "Day"})

    runs = list(occurrences(plan, utc(2026, 3, 26), utc(2026, 3, 31)))

    assert runs == [
        utc(2026, 3, 27, 1, 30),
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 30),
        utc(2026, 3, 30, 0, 30),
    ]
    assert local(runs[2]) == datetime(2026, 3, 29, 3, 30)  # 02:30 does not exist; 03:30 CEST
    assert [local(run).hour for run in runs] == [2, 2, 3, 2]


def test_daily_at_a_time_the_autumn_change_repeats_runs_once_at_the_first():
    plan = schedule("2026-10-24T02:30:00", {"frequency": "Day"})

    runs = list(occurrences(plan, utc(2026, 10, 24), utc(2026, 10, 27)))

    assert runs == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_monthly_on_the_last_day_follows_each_months_length_including_leap_february():
    plan = schedule("2027-01-01T04:00:00", {"frequency": "Month", "monthDays": [-1]}, timeZone="UTC")

    runs = [run.date() for run in occurrences(plan, utc(2027, 1, 1), utc(2029, 1, 1))]

    expected = [date(y, m, calendar.monthrange(y, m)[1]) for y in (2027, 2028) for m in range(1, 13)]
    assert runs == expected
    assert date(2027, 2, 28) in runs and date(2028, 2, 29) in runs


def test_monthly_on_the_31st_skips_short_months_instead_of_clamping():
    plan = schedule("2026-01-01T02:00:00", {"frequency": "Month", "monthDays": [31]})

    runs = [local(run).date() for run in occurrences(plan, *YEAR_2026)]

    assert runs == [date(2026, m, 31) for m in range(1, 13) if calendar.monthrange(2026, m)[1] == 31]
    assert len(runs) == 7


def test_monthly_days_and_last_day_together_never_run_twice_on_one_day():
    plan = schedule("2026-01-01T02:00:00", {"frequency": "Month", "monthDays": [15, 31, -1], "interval": 3})

    runs = [local(run).date() for run in occurrences(plan, *YEAR_2026)]

    assert runs == [
        date(2026, 1, 15),
        date(2026, 1, 31),
        date(2026, 4, 15),
        date(2026, 4, 30),
        date(2026, 7, 15),
        date(2026, 7, 31),
        date(2026, 10, 15),
        date(2026, 10, 31),
    ]


def test_hourly_counts_elapsed_hours_so_the_local_hour_shifts_across_dst():
    plan = schedule("2026-03-28T20:00:00", {"frequency": "Hour", "interval": 6})

    runs = list(occurrences(plan, utc(2026, 3, 28), utc(2026, 3, 29, 14)))

    assert runs == [utc(2026, 3, 28, 19), utc(2026, 3, 29, 1), utc(2026, 3, 29, 7), utc(2026, 3, 29, 13)]
    assert [local(run).hour for run in runs] == [20, 3, 9, 15]  # 01:00 UTC is 03:00 CEST: 7 wall-clock hours


# -- bounds of the series -----------------------------------------------------------------------------


def test_expiry_ends_the_series_and_an_occurrence_at_expiry_still_runs():
    plan = schedule("2026-01-01T02:00:00", {"frequency": "Day"}, expiryTime="2026-01-05T02:00:00")

    runs = list(occurrences(plan, *YEAR_2026))

    assert [local(run).date() for run in runs] == [date(2026, 1, day) for day in range(1, 6)]
    assert next_occurrence(plan, runs[-1]) is None


def test_once_runs_at_its_start_only():
    plan = schedule("2026-06-01T02:00:00")

    assert list(occurrences(plan, *YEAR_2026)) == [utc(2026, 6, 1, 0)]
    assert next_occurrence(plan, utc(2026, 1, 1)) == utc(2026, 6, 1, 0)
    assert next_occurrence(plan, utc(2026, 6, 1, 0)) is None  # strictly after


def test_after_is_exclusive_and_until_inclusive():
    plan = schedule("2026-01-01T00:00:00", {"frequency": "Day"}, timeZone="UTC")

    assert list(occurrences(plan, utc(2026, 1, 2), utc(2026, 1, 4))) == [utc(2026, 1, 3), utc(2026, 1, 4)]
    assert next_occurrence(plan, utc(2026, 1, 2)) == utc(2026, 1, 3)


@pytest.mark.parametrize(
    "recurrence",
    [
        {"frequency": "Hour", "interval": 7},
        {"frequency": "Day", "interval": 3},
        {"frequency": "Week", "interval": 3, "weekDays": ["Monday", "Sunday"]},
        {"frequency": "Month", "interval": 2, "monthDays": [1, 30, -1]},
        {"frequency": "Month", "monthlyOccurrence": {"day": "Friday", "occurrence": 1, "offsetDays": -6}},
    ],
)
def test_asking_late_in_a_long_series_gives_what_walking_it_from_the_start_gives(recurrence):
    plan = schedule("2026-01-07T02:30:00", recurrence)
    window = (utc(2031, 2, 26, 5), utc(2031, 9, 1))

    walked = [run for run in occurrences(plan, utc(2026, 1, 1), window[1]) if run > window[0]]

    assert walked
    assert list(occurrences(plan, *window)) == walked
    assert next_occurrence(plan, window[0]) == walked[0]


def test_naive_bounds_are_refused():
    plan = schedule("2026-01-01T02:00:00")
    with pytest.raises(ValueError, match="after must be an aware datetime"):
        list(occurrences(plan, datetime(2026, 1, 1), utc(2027, 1, 1)))


# -- the model: wire shape and validation -------------------------------------------------------------


def test_the_model_reads_and_writes_camel_case_and_accepts_python_names():
    wire = {
        "startTime": "2026-01-16T02:00:00",
        "timeZone": "Europe/Berlin",
        "recurrence": {
            "frequency": "Month",
            "monthlyOccurrence": {"day": "Tuesday", "occurrence": 2, "offsetDays": 3},
        },
        "expiryTime": "2027-01-16T02:00:00",
    }
    plan = Schedule.model_validate(wire)

    dumped = plan.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["recurrence"]["monthlyOccurrence"] == {"day": "Tuesday", "occurrence": 2, "offsetDays": 3}
    assert dumped["startTime"] == "2026-01-16T02:00:00" and dumped["expiryTime"] == "2027-01-16T02:00:00"
    assert Schedule.model_validate(dumped) == plan
    assert Schedule(start_time=datetime(2026, 1, 16, 2), time_zone="Europe/Berlin").recurrence is None


VALID = {"startTime": "2026-01-16T02:00:00", "timeZone": "Europe/Berlin"}


@pytest.mark.parametrize(
    ("changes", "location", "rule"),
    [
        ({"timeZone": "Europe/Atlantis"}, ("timeZone",), "IANA time zone"),
        ({"startTime": "2026-01-16T02:00:00+01:00"}, ("startTime",), "without an offset"),
        ({"startTime": "2026-01-16T02:00:00Z"}, ("startTime",), "without an offset"),
        (
            {"recurrence": {"frequency": "Day", "weekDays": ["Monday"]}},
            ("recurrence", "weekDays"),
            "only allowed when frequency is Week",
        ),
        ({"recurrence": {"frequency": "Week"}}, ("recurrence", "weekDays"), "required"),
        (
            {
                "recurrence": {
                    "frequency": "Month",
                    "monthDays": [1],
                    "monthlyOccurrence": {"day": "Tuesday", "occurrence": 2},
                }
            },
            ("recurrence", "monthlyOccurrence"),
            "exactly one of monthDays and monthlyOccurrence",
        ),
        ({"recurrence": {"frequency": "Month"}}, ("recurrence", "monthlyOccurrence"), "exactly one"),
        (
            {"recurrence": {"frequency": "Month", "monthlyOccurrence": {"day": "Tuesday", "occurrence": 5}}},
            ("recurrence", "monthlyOccurrence", "occurrence"),
            "1 to 4 or -1",
        ),
        (
            {
                "recurrence": {
                    "frequency": "Month",
                    "monthlyOccurrence": {"day": "Tuesday", "occurrence": 2, "offsetDays": 7},
                }
            },
            ("recurrence", "monthlyOccurrence", "offsetDays"),
            "less than or equal to 6",
        ),
        (
            {"recurrence": {"frequency": "Month", "monthDays": [0]}},
            ("recurrence", "monthDays"),
            "1 to 31 or -1",
        ),
        (
            {"recurrence": {"frequency": "Month", "monthDays": [5, 5]}},
            ("recurrence", "monthDays"),
            "must not repeat",
        ),
        (
            {"recurrence": {"frequency": "Day", "interval": 0}},
            ("recurrence", "interval"),
            "interval must be 1 to 365",
        ),
        (
            {"recurrence": {"frequency": "Month", "interval": 13, "monthDays": [1]}},
            ("recurrence", "interval"),
            "1 to 12",
        ),
        (
            {"recurrence": {"frequency": "Week", "weekDays": ["Funday"]}},
            ("recurrence", "weekDays", 0),
            "Monday",
        ),
        ({"recurrence": {"frequency": "Fortnight"}}, ("recurrence", "frequency"), "Hour"),
        ({"expiryTime": "2026-01-16T01:59:00"}, ("expiryTime",), "after startTime"),
        ({"expiryTime": "2026-01-16T02:00:00"}, ("expiryTime",), "after startTime"),
        (
            {"recurrence": {"frequency": "Day", "every": 2}},
            ("recurrence", "every"),
            "Extra inputs are not permitted",
        ),
        ({"start": "2026-01-16T02:00:00"}, ("start",), "Extra inputs are not permitted"),
    ],
)
def test_every_invalid_schedule_names_the_field_and_the_rule(changes, location, rule):
    with pytest.raises(ValidationError) as raised:
        Schedule.model_validate(VALID | changes)

    errors = raised.value.errors()
    assert [error["loc"] for error in errors] == [location]
    assert rule in errors[0]["msg"]
