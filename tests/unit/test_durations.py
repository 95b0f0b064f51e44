"""Durations as people read them (shared.durations)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.durations import readable_duration


@pytest.mark.parametrize(("duration", "shown"), [
    (timedelta(minutes=37, seconds=53), "37 min 53 s"),
    (timedelta(seconds=0), "0 s"),
    (timedelta(seconds=59.9), "59 s"),
    (timedelta(minutes=1), "1 min 0 s"),
    (timedelta(hours=2, minutes=5), "2 h 5 min"),
    (timedelta(hours=26, seconds=7), "26 h 0 min 7 s"),
    (timedelta(seconds=-3), "0 s"),
    (125, "2 min 5 s"),
])
def test_durations_read_as_people_write_them(duration, shown):
    assert readable_duration(duration) == shown
