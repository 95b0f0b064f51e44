"""Deployment schedules: the ``Schedule`` model and the occurrences it produces.

A schedule is written in local wall time in a time zone, as an administrator thinks of it
("02:00 Europe/Berlin, the second Tuesday of each month plus three days"), and the engine turns
it into UTC instants. The zone is an IANA name (``Europe/Berlin``) or a Windows one
(``W. Europe Standard Time``, as Azure Update Manager's maintenance configurations write it), read
through the CLDR mapping ``tzlocal`` ships; it is kept and shown as written. The rules, documented
here once:

- Day, Week and Month schedules stay on the wall clock: 02:00 local is 01:00 UTC in winter and
  00:00 UTC in summer in Berlin.
- A wall time that does not exist (02:30 on a spring-forward day) moves forward by the length of
  the gap (03:30 CEST), so the run still happens that day. That is what Python's ``fold=0`` gives
  for a non-existent time; no published Azure rule for the gap was found to follow instead.
- A wall time that happens twice (02:30 on the autumn day) takes the first one (``fold=0``, summer time).
- Hour schedules count elapsed real hours from the start instant, so across a DST change the
  local hour they fire at shifts by one: "every 6 hours" means six hours apart, always.
- Month days past the end of a month (31 in April) are skipped, not clamped, unless the recurrence
  says ``"ifMissing": "lastDay"``: then they run on that month's last day (once, if several fall
  there). -1 is the last day. :func:`skipped_months` names the months a schedule skips.
- "The second Tuesday plus 3 days" belongs to the month of the Tuesday even when the offset
  carries it into the next or previous month (the last Tuesday of January + 6 can be in February).
- The first occurrence is never before ``startTime``; ``expiryTime`` is the last instant an
  occurrence may have (inclusive), so the series ends there.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel
from tzlocal.windows_tz import win_tz  # CLDR windowsZones.xml, territory 001: Windows name -> IANA


class Frequency(StrEnum):
    HOUR = "Hour"
    DAY = "Day"
    WEEK = "Week"
    MONTH = "Month"


class WeekDay(StrEnum):
    """Listed in ``datetime.weekday()`` order (Monday = 0)."""

    MONDAY = "Monday"
    TUESDAY = "Tuesday"
    WEDNESDAY = "Wednesday"
    THURSDAY = "Thursday"
    FRIDAY = "Friday"
    SATURDAY = "Saturday"
    SUNDAY = "Sunday"

    @property
    def number(self) -> int:
        """Monday = 0 ... Sunday = 6, as ``date.weekday()`` counts."""
        return list(WeekDay).index(self)


# Interval bounds: at most one year between occurrences. A rarer schedule is better expressed as
# a one-off; the bound also keeps "no occurrence within the horizon" decidable (see below).
MAX_INTERVAL = {Frequency.HOUR: 8760, Frequency.DAY: 365, Frequency.WEEK: 52, Frequency.MONTH: 12}
# Azure maintenance configurations accept "Second Tuesday Offset-6" to "Offset6" (Update Manager docs).
MAX_OFFSET_DAYS = 6
LAST = -1  # the last day of the month / the last weekday occurrence in the month
MAX_OCCURRENCE = 4  # a fifth weekday exists in only some months; "last" (-1) covers that need
# The longest possible wait between two occurrences: monthDays [29] every 12 months from a February
# waits for the next leap year, which can be 8 years away across a century (2096 -> 2104).
NEXT_OCCURRENCE_HORIZON = timedelta(days=366 * 9)


class _Wire(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


class MonthlyOccurrence(_Wire):
    day: WeekDay
    occurrence: int = Field(description="1-4 for the first to fourth, -1 for the last in the month")
    offset_days: int = Field(default=0, ge=-MAX_OFFSET_DAYS, le=MAX_OFFSET_DAYS)

    @field_validator("occurrence")
    @classmethod
    def _occurrence_in_range(cls, value: int) -> int:
        if value != LAST and not 1 <= value <= MAX_OCCURRENCE:
            raise ValueError(f"occurrence must be 1 to {MAX_OCCURRENCE} or {LAST} (last), got {value}")
        return value


class Recurrence(_Wire):
    """Field order matters: each validator reads the fields validated before it from ``info.data``."""

    frequency: Frequency
    interval: int = 1
    week_days: tuple[WeekDay, ...] | None = None
    month_days: tuple[int, ...] | None = None
    # What a month day that a month lacks (31 in April) does: absent means skip that month.
    if_missing: Literal["skip", "lastDay"] | None = None
    monthly_occurrence: MonthlyOccurrence | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_absent_fields(cls, data: Any) -> Any:
        """Give absent fields their default explicitly, so the rules that depend on the frequency run
        for them too and an error's location is the camelCase name (a validated default reports the
        Python name instead)."""
        if not isinstance(data, dict):
            return data
        filled = dict(data)
        for name, field in cls.model_fields.items():
            alias = field.alias or name
            if name not in filled and alias not in filled:
                filled[alias] = field.default
        return filled

    @field_validator("interval")
    @classmethod
    def _interval_in_range(cls, value: int, info: ValidationInfo) -> int:
        frequency = info.data.get("frequency")
        upper = MAX_INTERVAL[frequency] if frequency else max(MAX_INTERVAL.values())
        if not 1 <= value <= upper:
            raise ValueError(f"interval must be 1 to {upper} for frequency {frequency}, got {value}")
        return value

    @field_validator("week_days")
    @classmethod
    def _week_days_only_weekly(
        cls, value: tuple[WeekDay, ...] | None, info: ValidationInfo
    ) -> tuple[WeekDay, ...] | None:
        weekly = info.data.get("frequency") == Frequency.WEEK
        if weekly and not value:
            raise ValueError("weekDays is required (at least one day) when frequency is Week")
        if not weekly and value is not None:
            raise ValueError("weekDays is only allowed when frequency is Week")
        _reject_duplicates(value)
        return value

    @field_validator("month_days")
    @classmethod
    def _month_days_only_monthly(
        cls, value: tuple[int, ...] | None, info: ValidationInfo
    ) -> tuple[int, ...] | None:
        if value is None:
            return value
        if info.data.get("frequency") != Frequency.MONTH:
            raise ValueError("monthDays is only allowed when frequency is Month")
        if not value:
            raise ValueError("monthDays must list at least one day")
        wrong = [day for day in value if day != LAST and not 1 <= day <= 31]
        if wrong:
            raise ValueError(f"monthDays must be 1 to 31 or {LAST} (last day of the month), got {wrong}")
        _reject_duplicates(value)
        return value

    @field_validator("if_missing")
    @classmethod
    def _if_missing_with_month_days(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("month_days") is None:
            raise ValueError("ifMissing is only allowed with monthDays")
        return value

    @field_validator("monthly_occurrence")
    @classmethod
    def _exactly_one_monthly_rule(
        cls, value: MonthlyOccurrence | None, info: ValidationInfo
    ) -> MonthlyOccurrence | None:
        if info.data.get("frequency") != Frequency.MONTH:
            if value is not None:
                raise ValueError("monthlyOccurrence is only allowed when frequency is Month")
            return value
        if "month_days" not in info.data:
            return value  # monthDays is itself invalid and already reported
        has_days = info.data["month_days"] is not None
        if has_days == (value is not None):
            raise ValueError("a Month schedule needs exactly one of monthDays and monthlyOccurrence")
        return value


def _reject_duplicates(values: tuple[Any, ...] | None) -> None:
    if values and len(set(values)) != len(values):
        raise ValueError(f"values must not repeat, got {list(values)}")


# The JSON Schema of a wall time (for the OpenAPI document): its "date-time" format demands an offset
# (RFC 3339), which the rule below refuses.
WALL_TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?$"


def _wall_time_schema(schema: dict[str, Any]) -> None:
    for part in (schema, *schema.get("anyOf", ())):
        if part.pop("format", None) == "date-time":
            part["pattern"] = WALL_TIME_PATTERN
            part["description"] = "a local wall time in timeZone, without an offset or Z"


_WINDOWS_ZONES = {name.lower(): iana for name, iana in win_tz.items()}
TIME_ZONE_RULE = ("an IANA time zone name such as Europe/Berlin, or a Windows one such as "
                  "W. Europe Standard Time")


@lru_cache(maxsize=512)
def zone_named(name: str) -> ZoneInfo:
    """The zone of an IANA name, else of a Windows time zone name (ignoring case); ValueError if neither."""
    for candidate in (name, _WINDOWS_ZONES.get(name.strip().lower())):
        try:
            if candidate:
                return ZoneInfo(candidate)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    raise ValueError(f"timeZone must be {TIME_ZONE_RULE}, got {name!r}")


class Schedule(_Wire):
    """When a deployment runs. Times are local wall times in ``time_zone``, without an offset."""

    start_time: datetime = Field(json_schema_extra=_wall_time_schema)
    time_zone: str = Field(description=f"{TIME_ZONE_RULE}; kept as written")
    recurrence: Recurrence | None = None
    expiry_time: datetime | None = Field(None, json_schema_extra=_wall_time_schema)

    @field_validator("start_time", "expiry_time")
    @classmethod
    def _wall_time_without_offset(cls, value: datetime | None) -> datetime | None:
        # An offset would fix the UTC instant and fight timeZone: 02:00+01:00 is 03:00 in Berlin summer.
        if value is not None and value.tzinfo is not None:
            raise ValueError(
                "must be a local wall time without an offset or Z (the time zone comes from timeZone)"
            )
        return value

    @field_validator("time_zone")
    @classmethod
    def _known_time_zone(cls, value: str) -> str:
        zone_named(value)
        return value

    @field_validator("expiry_time")
    @classmethod
    def _expiry_after_start(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("start_time")
        if value is not None and start is not None and value <= start:
            raise ValueError(f"expiryTime must be after startTime ({start.isoformat()})")
        return value

    @property
    def zone(self) -> ZoneInfo:
        return zone_named(self.time_zone)


def to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall time: gaps move forward by their length, repeats take the first."""
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def occurrences(schedule: Schedule, after: datetime, until: datetime) -> Iterator[datetime]:
    """Occurrences as aware UTC datetimes, in order, strictly after ``after`` and at most ``until``."""
    require_aware(after, "after")
    require_aware(until, "until")
    zone = schedule.zone
    end = until.astimezone(UTC)
    if schedule.expiry_time is not None:
        end = min(end, to_utc(schedule.expiry_time, zone))
    start = schedule.start_time
    for candidate in _candidates(schedule, after, end):
        instant = candidate if candidate.tzinfo is not None else to_utc(candidate, zone)
        if instant > end:
            return
        if candidate.tzinfo is None and candidate < start:
            continue
        if instant > after:
            yield instant


def next_occurrence(schedule: Schedule, after: datetime) -> datetime | None:
    """The first occurrence strictly after ``after``, or None once the series has ended."""
    return next(occurrences(schedule, after, after + NEXT_OCCURRENCE_HORIZON), None)


def require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be an aware datetime (UTC), got naive {value.isoformat()}")


def _candidates(schedule: Schedule, after: datetime, end: datetime) -> Iterator[datetime]:
    """Wall times (naive, local) in order, from a little before ``after``; Hour yields UTC instants.

    The caller filters what precedes ``startTime`` or ``after`` and stops at the end; starting
    one period early keeps a long-running series from being walked from its first day.
    """
    rule = schedule.recurrence
    if rule is None:
        yield schedule.start_time
        return
    after_local = after.astimezone(schedule.zone).replace(tzinfo=None)
    if rule.frequency is Frequency.HOUR:
        yield from _hourly(schedule, rule.interval, after)
    elif rule.frequency is Frequency.DAY:
        yield from _daily(schedule.start_time, rule.interval, after_local)
    elif rule.frequency is Frequency.WEEK:
        yield from _weekly(schedule.start_time, rule, after_local)
    else:
        # A month rule may produce no day for ever (the 31st of every 12th month from February):
        # it stops past ``end`` instead of walking months without yielding.
        yield from _monthly(schedule.start_time, rule, after_local, end.astimezone(schedule.zone).date())


def _hourly(schedule: Schedule, interval: int, after: datetime) -> Iterator[datetime]:
    step = timedelta(hours=interval)
    first = to_utc(schedule.start_time, schedule.zone)
    index = max(0, (after.astimezone(UTC) - first) // step)
    while True:
        yield first + index * step
        index += 1


def _daily(start: datetime, interval: int, after_local: datetime) -> Iterator[datetime]:
    index = max(0, (after_local.date() - start.date()).days // interval - 1)
    while True:
        yield datetime.combine(start.date() + timedelta(days=index * interval), start.time())
        index += 1


def _weekly(start: datetime, rule: Recurrence, after_local: datetime) -> Iterator[datetime]:
    """Weeks run Monday to Sunday; every ``interval``-th week from the week holding ``startTime``."""
    first_monday = start.date() - timedelta(days=start.weekday())
    days = sorted(day.number for day in rule.week_days or ())
    index = max(0, (after_local.date() - first_monday).days // (7 * rule.interval) - 1)
    while True:
        monday = first_monday + timedelta(weeks=index * rule.interval)
        for offset in days:
            yield datetime.combine(monday + timedelta(days=offset), start.time())
        index += 1


def _monthly(start: datetime, rule: Recurrence, after_local: datetime, last_day: date) -> Iterator[datetime]:
    """Every ``interval``-th month from the month of ``startTime``, up to the month after ``last_day``."""
    months_since = (after_local.year - start.year) * 12 + after_local.month - start.month
    index = max(0, months_since // rule.interval - 1)
    while True:
        year, month0 = divmod(start.year * 12 + start.month - 1 + index * rule.interval, 12)
        if date(year, month0 + 1, 1) > last_day + timedelta(days=MAX_OFFSET_DAYS + 31):
            return  # an offset can carry a day back by at most MAX_OFFSET_DAYS
        for day in _days_in_month(year, month0 + 1, rule):
            yield datetime.combine(day, start.time())
        index += 1


def _days_in_month(year: int, month: int, rule: Recurrence) -> list[date]:
    if rule.monthly_occurrence is not None:
        return [nth_weekday(year, month, rule.monthly_occurrence)]
    length = calendar.monthrange(year, month)[1]
    numbers = {length if day == LAST else day for day in rule.month_days or ()}
    if rule.if_missing == "lastDay":
        numbers = {min(number, length) for number in numbers}
    return [date(year, month, number) for number in sorted(numbers) if number <= length]


_MONTHS_WITHOUT = {
    29: "February (except in leap years)",
    30: "February",
    31: "February, April, June, September and November",
}


def skipped_months(schedule: Schedule) -> list[str]:
    """One sentence per month day that some months lack and that the schedule skips there
    (no ``ifMissing: lastDay``); empty when every listed day exists in every month."""
    rule = schedule.recurrence
    if rule is None or not rule.month_days or rule.if_missing == "lastDay":
        return []
    return [
        f"monthDays {day}: no run in {_MONTHS_WITHOUT[day]}, which have no day {day}; "
        'add "ifMissing": "lastDay" to run on their last day instead'
        for day in sorted(d for d in rule.month_days if d in _MONTHS_WITHOUT)
    ]


def nth_weekday(year: int, month: int, rule: MonthlyOccurrence) -> date:
    """The n-th (or last) ``rule.day`` of the month, plus ``rule.offset_days`` (may leave the month)."""
    length = calendar.monthrange(year, month)[1]
    if rule.occurrence == LAST:
        last = date(year, month, length)
        base = last - timedelta(days=(last.weekday() - rule.day.number) % 7)
    else:
        first = date(year, month, 1)
        base = first + timedelta(days=(rule.day.number - first.weekday()) % 7 + 7 * (rule.occurrence - 1))
    return base + timedelta(days=rule.offset_days)


__all__ = [
    "MAX_INTERVAL",
    "MAX_OFFSET_DAYS",
    "Frequency",
    "MonthlyOccurrence",
    "Recurrence",
    "Schedule",
    "WeekDay",
    "next_occurrence",
    "nth_weekday",
    "occurrences",
    "require_aware",
    "skipped_months",
    "to_utc",
    "zone_named",
]
