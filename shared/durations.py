"""Durations as people read them (``37 min 53 s``), for what the product prints or shows beside the
ISO 8601 form (``PT0H37M53S``) its API promises to programs."""

from __future__ import annotations

from datetime import timedelta


def readable_duration(duration: timedelta | float) -> str:
    """``53 s``, ``37 min 53 s``, ``2 h 5 min``, ``26 h 0 min 7 s``: whole seconds, leading zero units
    left out, zero units between kept so columns of them line up when read; never negative."""
    seconds = max(0, int(duration.total_seconds() if isinstance(duration, timedelta) else duration))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min" + (f" {seconds} s" if seconds else "")
    if minutes:
        return f"{minutes} min {seconds} s"
    return f"{seconds} s"
