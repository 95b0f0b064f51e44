"""Definitions that cannot work are refused at creation, and those that skip months say so.

Masks that exclude everything, one-time schedules in the past, machines outside the managed
subscriptions, month days some months lack (warned, or run on the last day with ``ifMissing``)."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from shared.deployments.definition import (
    DefinitionError,
    admit,
    matches_every_name,
    validate_definition,
)
from shared.deployments.schedule import Schedule, occurrences, skipped_months
from tests.unit.test_deployment_definition import SUB, linux, windows

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
OTHER_SUB = "99999999-9999-4999-8999-999999999999"


def linux_to(machines: list[str], **changes: Any) -> dict[str, Any]:
    body = linux() | {"targets": {"machines": machines}} | changes
    return body


def machine(subscription: str = SUB, name: str = "web01") -> str:
    provider = "Microsoft.Compute/virtualMachines"
    return f"/subscriptions/{subscription}/resourceGroups/rg/providers/{provider}/{name}"


@pytest.mark.parametrize("mask", ["*", "**", "?*", "*?", "*?*", "*.*", "**.**"])
def test_an_exclude_mask_matching_every_package_is_refused_naming_the_field(mask):
    with pytest.raises(DefinitionError) as refused:
        validate_definition(linux() | {"packagesToExclude": ["kernel*", mask]})
    assert refused.value.field == "packagesToExclude"
    assert "excludes every package" in refused.value.message


@pytest.mark.parametrize("mask", ["k*", "*-devel", "??*", "*.x86_64", "?", "*.", ".*", "kernel-?.x86_64"])
def test_masks_that_leave_some_packages_are_accepted(mask):
    assert not matches_every_name(mask)
    assert validate_definition(linux() | {"packagesToExclude": [mask]}).packages_to_exclude == [mask]


def test_an_include_mask_of_everything_is_still_allowed():
    assert validate_definition(linux() | {"packagesToInclude": ["*"]}).packages_to_include == ["*"]


def test_a_one_time_schedule_in_the_past_is_refused_naming_start_time():
    definition = validate_definition(linux_to([machine()], schedule={"startTime": "2026-02-01T22:00:00",
                                                                     "timeZone": "UTC"}))
    with pytest.raises(DefinitionError) as refused:
        admit(definition, NOW, [SUB])
    assert refused.value.field == "schedule.startTime"


def test_a_one_time_schedule_later_today_is_accepted_without_warnings():
    definition = validate_definition(linux_to([machine()], schedule={"startTime": "2026-12-02T22:00:00",
                                                                     "timeZone": "UTC"}))
    assert admit(definition, NOW, [SUB]) == []


def test_a_recurring_schedule_that_has_expired_is_refused_naming_expiry_time():
    body = windows() | {"schedule": windows()["schedule"] | {"expiryTime": "2026-06-30T00:00:00"}}
    with pytest.raises(DefinitionError) as refused:
        admit(validate_definition(body), NOW, [SUB])
    assert refused.value.field == "schedule.expiryTime"


def test_a_recurrence_that_never_lands_is_refused():
    # Every 12 months from February, on the 31st: February has no 31st, ever.
    schedule = {"startTime": "2027-02-01T02:00:00", "timeZone": "UTC",
                "recurrence": {"frequency": "Month", "interval": 12, "monthDays": [31]}}
    with pytest.raises(DefinitionError) as refused:
        admit(validate_definition(windows() | {"schedule": schedule}), NOW, [SUB])
    assert refused.value.field == "schedule.recurrence"


def test_machines_outside_the_managed_subscriptions_are_refused_naming_the_machine():
    later = {"startTime": "2027-01-01T00:00:00", "timeZone": "UTC"}
    definition = validate_definition(linux_to([machine(), machine(OTHER_SUB, "far01")], schedule=later))
    with pytest.raises(DefinitionError) as refused:
        admit(definition, NOW, [SUB])
    assert refused.value.field == "targets.machines.1"
    assert OTHER_SUB in refused.value.message
    assert admit(definition, NOW, [SUB.upper(), OTHER_SUB]) == []


def test_a_group_filter_on_an_unmanaged_subscription_is_refused():
    body = linux() | {"targets": {"groups": [{"filter": {"subscriptionIds": [OTHER_SUB]}}]},
                      "schedule": {"startTime": "2027-01-01T00:00:00", "timeZone": "UTC"}}
    with pytest.raises(DefinitionError) as refused:
        admit(validate_definition(body), NOW, [SUB])
    assert refused.value.field == "targets.groups.0.filter.subscriptionIds"


# --- month days that some months lack -------------------------------------------------------------


def monthly(days: list[int], **extra: Any) -> Schedule:
    return Schedule.model_validate({"startTime": "2027-01-01T02:00:00", "timeZone": "UTC",
                                    "recurrence": {"frequency": "Month", "monthDays": days, **extra}})


def dates(schedule: Schedule, year: int) -> list[date]:
    return [run.date() for run in occurrences(schedule, datetime(year, 1, 1, tzinfo=UTC),
                                              datetime(year + 1, 1, 1, tzinfo=UTC))]


def test_day_31_warns_naming_the_five_months_it_skips():
    warnings = skipped_months(monthly([1, 31]))
    assert len(warnings) == 1
    assert "February, April, June, September and November" in warnings[0]
    assert "ifMissing" in warnings[0]
    body = windows() | {"schedule": monthly([31]).model_dump(mode="json", by_alias=True, exclude_none=True)}
    assert admit(validate_definition(body), NOW, [SUB]) == warnings


def test_days_29_and_30_warn_about_february_and_days_every_month_has_do_not():
    assert [w.split(":")[0] for w in skipped_months(monthly([30, 29]))] == ["monthDays 29", "monthDays 30"]
    assert "leap" in skipped_months(monthly([29]))[0]
    assert skipped_months(monthly([1, 15, 28, -1])) == []
    assert skipped_months(monthly([31], ifMissing="lastDay")) == []


@pytest.mark.parametrize("year", [2027, 2028])  # 2028 is a leap year
def test_if_missing_last_day_runs_every_month_on_the_day_or_the_months_last_day(year):
    runs = dates(monthly([31], ifMissing="lastDay"), year)
    assert runs == [date(year, m, calendar.monthrange(year, m)[1]) for m in range(1, 13)]
    assert date(year, 2, 29 if year == 2028 else 28) in runs


@pytest.mark.parametrize("year", [2027, 2028])
def test_if_missing_last_day_runs_once_when_several_days_fall_on_the_last(year):
    runs = dates(monthly([29, 30, 31], ifMissing="lastDay"), year)
    february = [run for run in runs if run.month == 2]
    assert february == [date(year, 2, 29 if year == 2028 else 28)]
    assert len(runs) == 7 * 3 + 4 * 2 + 1  # 31-day months thrice, 30-day months twice, February once


def test_day_29_without_if_missing_skips_february_only_outside_leap_years():
    assert date(2028, 2, 29) in dates(monthly([29]), 2028)
    assert [run.month for run in dates(monthly([29]), 2027)] == [m for m in range(1, 13) if m != 2]


def test_if_missing_belongs_to_month_days_and_round_trips():
    with pytest.raises(ValidationError, match="ifMissing is only allowed with monthDays"):
        Schedule.model_validate({"startTime": "2028-01-01T02:00:00", "timeZone": "UTC",
                                 "recurrence": {"frequency": "Day", "ifMissing": "lastDay"}})
    with pytest.raises(ValidationError):
        monthly([31], ifMissing="clamp")
    body = {"startTime": "2028-01-01T02:00:00", "timeZone": "UTC",
            "recurrence": {"frequency": "Month", "interval": 1, "monthDays": [31], "ifMissing": "lastDay"}}
    assert Schedule.model_validate(body).model_dump(mode="json", by_alias=True, exclude_none=True) == body


def test_a_start_with_no_utc_instant_is_a_400_not_a_crash():
    schedule = {"startTime": "9999-12-31T23:00:00", "timeZone": "America/New_York"}
    with pytest.raises(DefinitionError) as refused:
        admit(validate_definition(linux_to([machine()], schedule=schedule)), NOW, [SUB])
    assert refused.value.field == "schedule"
