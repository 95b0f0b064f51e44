"""History timestamps parsed without dateutil: the Durable SDK's replay spent most of its time there.

azure-functions-durable 1.7.0 builds every history event of every replay with
``dateutil.parser.parse(Timestamp)`` (models/history/HistoryEvent.py), about 40 µs each; a machine's
assessment replays about 200 events. The Durable extension writes those timestamps with Json.NET's
default ISO format ``yyyy-MM-ddTHH:mm:ss.FFFFFFFK``: up to 7 fractional digits, trailing zeros and then
the dot dropped, ``Z`` for UTC (``+hh:mm`` for a local time, nothing for an unspecified one). The
SDK's own test of a host payload carries ``2019-12-08T23:18:41.3240927Z`` and
``2019-12-08T23:18:39.756132Z`` (azure-functions-durable-python,
tests/models/test_DurableOrchestrationContext.py).

:func:`parse_timestamp` reads exactly those shapes and builds the value dateutil builds (the same
instant, digits past the sixth cut off, the same tzinfo); any other text goes to dateutil itself,
so nothing the host might send is read differently. :func:`install` puts it in the SDK's place.
"""

from __future__ import annotations

import importlib
import logging
import re
import time
from datetime import datetime, tzinfo
from typing import Any

from dateutil import tz
from dateutil.parser import parse as dateutil_parse

log = logging.getLogger(__name__)

# Json.NET's "yyyy-MM-ddTHH:mm:ss.FFFFFFFK": seconds, 0-7 fractional digits, then Z, +hh:mm or nothing.
_SHAPE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?"
    r"(?:(Z)|([+-])([01]\d|2[0-3]):([0-5]\d))?",
    re.ASCII,  # digits 0-9 only
)
# The SDK modules that bind dateutil's parse as ``dt_parse`` at import (azure-functions-durable 1.7.0).
SDK_MODULES = (
    "azure.durable_functions.models.history.HistoryEvent",
    "azure.durable_functions.models.DurableOrchestrationStatus",
)


def parse_timestamp(text: Any, *args: Any, **kwargs: Any) -> datetime:
    """``dateutil.parser.parse(text)``, without dateutil for the shapes the Durable extension writes."""
    match = _SHAPE.fullmatch(text) if isinstance(text, str) and not args and not kwargs else None
    if match is None:
        return dateutil_parse(text, *args, **kwargs)
    year, month, day, hour, minute, second, fraction, utc, sign, off_hours, off_minutes = match.groups()
    zone: tzinfo | None = None
    if utc or sign:
        offset = 0 if utc else (int(off_hours) * 3600 + int(off_minutes) * 60) * (1 if sign == "+" else -1)
        zone = _zone(offset)
        if zone is None:
            return dateutil_parse(text)
    micro = int(fraction[:6].ljust(6, "0")) if fraction else 0  # dateutil cuts, never rounds
    try:
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, zone)
    except ValueError:  # a day or hour out of range: dateutil says what is wrong, as before
        return dateutil_parse(text)


def _zone(offset: int) -> tzinfo | None:
    """dateutil's choice (parser._build_tzaware): any offset but zero is an unnamed ``tzoffset``; a zero
    one is named "UTC", which is ``tzlocal()`` on a host whose local zone is UTC (Azure's default) and
    ``tz.UTC`` where no local zone name is "UTC". None, for dateutil to decide, in a local zone named
    UTC only part of the year."""
    if offset:
        return tz.tzoffset(None, offset)
    names = time.tzname
    if "UTC" not in names:
        return tz.UTC
    return tz.tzlocal() if names == ("UTC", "UTC") else None


def install() -> bool:
    """Make the SDK parse history timestamps with :func:`parse_timestamp`; True when every SDK module
    was found as expected. An SDK that no longer binds ``dt_parse`` keeps its own parser (slower, same
    answers) and a warning says so; tests/unit/test_durable_timestamps.py fails on such an SDK."""
    complete = True
    for name in SDK_MODULES:
        module = importlib.import_module(name)
        current = getattr(module, "dt_parse", None)
        if current is parse_timestamp:
            continue
        if current is not dateutil_parse:
            log.warning("%s binds no dateutil dt_parse: history timestamps keep the SDK's parser", name)
            complete = False
            continue
        module.dt_parse = parse_timestamp  # type: ignore[attr-defined]
    return complete
