"""What a first-hour user meets in a definition: every bad field at once, Windows time-zone names, and
inline runs without a schedule (issue 15)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shared.deployments.definition import (
    DefinitionError,
    admit,
    validate_definition,
    validate_inline_definition,
)
from shared.deployments.schedule import Schedule, next_occurrence, zone_named
from tests.unit.test_deployment_definition import SUB, windows

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_every_invalid_field_is_reported_with_its_rule_in_body_order():
    body = {**windows(), "name": "bad name!", "maintenanceWindowMinutes": 5, "colour": "blue",
            "rollout": {"maxConcurrent": "150%"}}
    with pytest.raises(DefinitionError) as raised:
        validate_definition(body)
    error = raised.value
    fields = [field for field, _ in error.details]
    assert fields == ["name", "maintenanceWindowMinutes", "rollout.maxConcurrent", "colour"]
    assert error.field == "name" and str(error).startswith("name: must be 1-64 letters")
    assert dict(error.details)["colour"] == "unknown field"


def test_one_invalid_field_is_a_list_of_one():
    with pytest.raises(DefinitionError) as raised:
        validate_definition({**windows(), "maintenanceWindowMinutes": 5})
    assert [f for f, _ in raised.value.details] == ["maintenanceWindowMinutes"]


def test_admission_lists_each_machine_outside_the_managed_subscriptions_and_the_schedule():
    other = SUB.replace("aa", "bb")
    machines = [f"/subscriptions/{other}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/m{n}"
                for n in range(2)]
    body = {**windows(), "targets": {"machines": machines},
            "schedule": {"startTime": "2026-01-01T02:00:00", "timeZone": "UTC"}}
    with pytest.raises(DefinitionError) as raised:
        admit(validate_definition(body), NOW, [SUB])
    assert [f for f, _ in raised.value.details] == ["targets.machines.0", "targets.machines.1",
                                                     "schedule.startTime"]


@pytest.mark.parametrize(("windows_name", "iana"), [
    ("W. Europe Standard Time", "Europe/Berlin"),
    ("w. europe standard time", "Europe/Berlin"),
    ("Pacific Standard Time", "America/Los_Angeles"),
    ("GMT Standard Time", "Europe/London"),
    ("Tokyo Standard Time", "Asia/Tokyo"),
])
def test_windows_time_zone_names_map_through_cldr(windows_name, iana):
    assert zone_named(windows_name).key == iana


def test_a_windows_time_zone_runs_on_its_wall_clock_and_is_kept_as_written():
    schedule = Schedule.model_validate({"startTime": "2026-07-01T02:00:00",
                                        "timeZone": "W. Europe Standard Time",
                                        "recurrence": {"frequency": "Day"}})
    assert schedule.time_zone == "W. Europe Standard Time"
    # 02:00 in Berlin: 00:00 UTC in summer (CEST), 01:00 UTC in winter (CET).
    summer, winter = datetime(2026, 6, 30, 23, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    assert next_occurrence(schedule, summer) == datetime(2026, 7, 1, tzinfo=UTC)
    assert next_occurrence(schedule, winter) == datetime(2026, 12, 1, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize("name", ["Mars Standard Time", "Europe/Atlantis", ""])
def test_an_unknown_time_zone_is_refused_naming_the_field(name):
    with pytest.raises(DefinitionError) as raised:
        validate_definition({**windows(), "schedule": {"startTime": "2027-01-01T02:00:00", "timeZone": name}})
    assert raised.value.field == "schedule.timeZone"
    assert "Windows one such as W. Europe Standard Time" in raised.value.message
    with pytest.raises(ValidationError):
        Schedule.model_validate({"startTime": "2027-01-01T02:00:00", "timeZone": name})


def test_an_inline_definition_may_leave_out_the_schedule():
    body = {k: v for k, v in windows().items() if k != "schedule"}
    definition = validate_inline_definition(body, NOW + timedelta(microseconds=5))
    assert definition.schedule.time_zone == "UTC"
    assert definition.schedule.start_time == NOW.replace(tzinfo=None)
    # given, it is checked as anywhere else
    with pytest.raises(DefinitionError) as raised:
        validate_inline_definition({**body, "schedule": {"startTime": "x", "timeZone": "UTC"}}, NOW)
    assert raised.value.field == "schedule.startTime"
    # a stored definition still needs one
    with pytest.raises(DefinitionError) as raised:
        validate_definition(body)
    assert raised.value.field == "schedule"
