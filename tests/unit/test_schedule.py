from datetime import UTC, datetime, timedelta

import pytest

from shared.timer_slots import is_valid_ncrontab, schedule_slot, slot_id

EVERY_3_HOURS = "0 0 */3 * * *"


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 11, 23, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    "fired",
    [at(12, 0, 0), at(12, 0, 3), at(12, 47), at(14, 59, 50), at(11, 59, 57)],  # on time, late, a bit early
)
def test_every_firing_for_an_occurrence_maps_to_that_occurrence(fired):
    assert schedule_slot(EVERY_3_HOURS, fired) == at(12)


def test_the_next_occurrence_is_a_new_slot():
    assert slot_id(EVERY_3_HOURS, at(15, 0, 1)) != slot_id(EVERY_3_HOURS, at(14, 59))
    assert schedule_slot("0 */15 * * * *", at(13, 29, 50)) == at(13, 15)
    assert schedule_slot("0 */15 * * * *", at(13, 29, 58)) == at(13, 30)  # a moment early


def test_slots_are_utc_whatever_the_caller_timezone():
    berlin = at(12).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert schedule_slot(EVERY_3_HOURS, berlin + timedelta(minutes=1)) == at(12)


def test_expressions_are_checked():
    assert is_valid_ncrontab("0 */15 * * * *")
    assert not is_valid_ncrontab("0 61 * * * *")
    assert not is_valid_ncrontab("every hour")
