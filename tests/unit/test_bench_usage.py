"""The bench's reading of the machine's core times (bench/usage.py): stolen time is read from the line
``/proc/stat`` starts with, so that a wall figure taken on a shared virtual machine can be read beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.usage import _TICKS_PER_SECOND, CoreTimes


def stat_file(tmp_path: Path, first_line: str) -> Path:
    path = tmp_path / "stat"
    path.write_text(first_line + "\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 12345\n")
    return path


def test_core_times_split_busy_idle_and_stolen(tmp_path: Path) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice (proc(5))
    t = _TICKS_PER_SECOND
    line = f"cpu  {10 * t} {1 * t} {2 * t} {40 * t} {3 * t} 0 {1 * t} {7 * t} 0 0"
    times = CoreTimes.now(stat_file(tmp_path, line))
    assert times == CoreTimes(busy=14.0, idle=43.0, stolen=7.0)


def test_core_times_since_is_the_difference(tmp_path: Path) -> None:
    t = _TICKS_PER_SECOND
    earlier = CoreTimes.now(stat_file(tmp_path, f"cpu  {t} 0 0 {t} 0 0 0 {t} 0 0"))
    later = CoreTimes.now(stat_file(tmp_path, f"cpu  {5 * t} 0 {t} {3 * t} {t} 0 0 {4 * t} 0 0"))
    assert earlier is not None and later is not None
    assert later.since(earlier) == CoreTimes(busy=5.0, idle=3.0, stolen=3.0)


@pytest.mark.parametrize("content", ["", "intr 1 2 3\n", "cpu 1 2 3\n"])
def test_core_times_unreadable_answer_none(tmp_path: Path, content: str) -> None:
    path = tmp_path / "stat"
    path.write_text(content)
    assert CoreTimes.now(path) is None
    assert CoreTimes.now(tmp_path / "missing") is None
