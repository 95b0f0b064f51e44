"""ScaledClock: two processes built from the same numbers read the same sped-up time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from local.clock import ScaledClock


def test_two_clocks_from_the_same_json_agree_and_run_faster_than_wall_time():
    first = ScaledClock(datetime(2027, 1, 4, 1, 0, tzinfo=UTC), 600.0, wall_start=time.time())
    second = ScaledClock.from_json(first.to_json())
    assert abs((second.now() - first.now()).total_seconds()) < 60  # 0.1 s of wall time at most
    before = first.now()
    first.sleep_until(before + timedelta(seconds=60), timeout=5)  # 60 clock seconds: 0.1 s of wall time
    assert first.now() >= before + timedelta(seconds=60)
