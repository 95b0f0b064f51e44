"""The history timestamp shortcut reads what the Durable extension writes exactly as dateutil does.

Shapes: Json.NET's ``yyyy-MM-ddTHH:mm:ss.FFFFFFFK`` (0-7 fractional digits, ``Z``, ``+hh:mm`` or no
zone), as in the SDK's own test of a host payload (functions/durable_timestamps.py names it).
"""

from __future__ import annotations

import importlib
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dateutil import tz
from dateutil.parser import ParserError
from dateutil.parser import parse as dateutil_parse
from hypothesis import given
from hypothesis import strategies as st

from functions import durable_timestamps
from functions.durable_timestamps import SDK_MODULES, install, parse_timestamp

# What the host sent in the SDK's test (azure-functions-durable-python,
# tests/models/test_DurableOrchestrationContext.py), then the other shapes of the same format.
AZURE_SHAPES = (
    "2019-12-08T23:18:41.3240927Z",  # 7 digits: .NET ticks
    "2019-12-08T23:18:39.756132Z",  # a trailing zero dropped
    "2026-01-13T02:00:00.123Z",  # 3 digits
    "2026-01-13T02:00:00.1Z",
    "2026-01-13T02:00:00Z",  # no fraction: the dot goes too
    "2026-01-13T02:00:00.000000Z",  # the local runner's strftime %f (local/durable/history.py)
    "2026-01-13T02:00:00.1234567+01:00",  # a local DateTime
    "2026-01-13T02:00:00.5-05:30",
    "2026-01-13T02:00:00+00:00",
    "2026-01-13T02:00:00-00:00",
    "2026-01-13T02:00:00.9999999",  # an unspecified DateTime: no zone, a naive value
    "2024-02-29T23:59:59.9999999Z",
)
# Anything else is read by dateutil itself.
OTHER_TEXT = (
    "2026-01-13 02:00:00Z",
    "2026-01-13T02:00:00z",
    "2026-01-13T02:00:00.12345678Z",
    "2026-01-13T02:00:00+0100",
    "2026-01-13T02:00Z",
    "2026-01-13",
    "Tue, 13 Jan 2026 02:00:00 GMT",
    " 2026-01-13T02:00:00Z",
    "\u0662\u0660\u0662\u0666-01-13T02:00:00Z",  # Arabic-Indic digits: only dateutil reads them
)


def same(left: datetime, right: datetime) -> bool:
    """The same value in every way code could look at it: instant, fields, zone kind, offset and name."""
    return (left == right and repr(left) == repr(right) and type(left.tzinfo) is type(right.tzinfo)
            and left.utcoffset() == right.utcoffset() and left.tzname() == right.tzname())


@pytest.mark.parametrize("text", AZURE_SHAPES)
def test_every_shape_the_host_writes_reads_as_dateutil_reads_it(text, monkeypatch):
    expected = dateutil_parse(text)
    monkeypatch.setattr(durable_timestamps, "dateutil_parse", _refuse)
    assert same(parse_timestamp(text), expected)


def test_digits_past_the_sixth_are_cut_not_rounded():
    assert parse_timestamp("2026-01-13T02:00:00.9999999Z").microsecond == 999999
    assert parse_timestamp("2019-12-08T23:18:41.3240927Z").microsecond == 324092


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)),
       st.integers(0, 9), st.sampled_from(["Z", "", "+01:00", "-08:00", "+05:45", "+14:00", "+00:00"]))
def test_any_moment_in_the_hosts_format_reads_as_dateutil_reads_it(moment, tick, zone):
    text = dotnet_text(moment, tick, zone)
    assert same(parse_timestamp(text), dateutil_parse(text))


@pytest.mark.parametrize("text", OTHER_TEXT)
def test_other_text_is_left_to_dateutil(text, monkeypatch):
    calls: list[str] = []

    def counting(value: str, *args: Any, **kwargs: Any) -> datetime:
        calls.append(value)
        return dateutil_parse(value, *args, **kwargs)

    monkeypatch.setattr(durable_timestamps, "dateutil_parse", counting)
    assert same(parse_timestamp(text), dateutil_parse(text))
    assert calls == [text]


def test_a_date_that_does_not_exist_fails_as_dateutil_fails():
    with pytest.raises(ParserError):
        parse_timestamp("2026-02-30T00:00:00Z")
    with pytest.raises(ParserError):
        parse_timestamp("2026-01-13T24:00:00Z")


@pytest.mark.parametrize("names", [("CET", "CEST"), ("UTC", "UTC"), ("GMT", "BST")])
def test_utc_takes_the_zone_dateutil_gives_it_in_each_local_zone(names, monkeypatch):
    """dateutil makes "Z" ``tzlocal()`` where the local zone is named UTC (Azure's default) and
    ``tz.UTC`` elsewhere; the shortcut follows it in either."""
    monkeypatch.setattr(time, "tzname", names)
    for text in ("2026-01-13T02:00:00.1234567Z", "2026-01-13T02:00:00+00:00"):
        assert same(parse_timestamp(text), dateutil_parse(text))


def test_a_local_zone_named_utc_only_part_of_the_year_is_left_to_dateutil(monkeypatch):
    monkeypatch.setattr(time, "tzname", ("UTC", "BST"))
    monkeypatch.setattr(durable_timestamps, "dateutil_parse", lambda text: "dateutil")
    assert parse_timestamp("2026-07-13T02:00:00Z") == "dateutil"
    assert same(parse_timestamp("2026-07-13T02:00:00+02:00"),
                datetime(2026, 7, 13, 2, tzinfo=tz.tzoffset(None, 7200)))


def test_installed_the_sdk_replays_with_it_and_gets_dateutils_time(monkeypatch):
    from azure.durable_functions.models.DurableOrchestrationContext import DurableOrchestrationContext

    for name in SDK_MODULES:
        monkeypatch.setattr(importlib.import_module(name), "dt_parse", dateutil_parse)
    assert install() is True
    assert install() is True  # twice is harmless
    for name in SDK_MODULES:
        assert sys.modules[name].dt_parse is parse_timestamp  # type: ignore[attr-defined]
    context = DurableOrchestrationContext.from_json(
        '{"history":[{"EventType":12,"EventId":-1,"IsPlayed":false,"Timestamp":"2019-12-08T23:18:41.3240927Z"},'
        '{"EventType":0,"Name":"o","Version":"","Input":"null","EventId":-1,"IsPlayed":false,'
        '"Timestamp":"2019-12-08T23:18:39.756132Z"}],"input":null,"instanceId":"i","isReplaying":false,'
        '"parentInstanceId":null}')
    assert same(context.current_utc_datetime, dateutil_parse("2019-12-08T23:18:41.3240927Z"))
    assert context.current_utc_datetime == datetime(2019, 12, 8, 23, 18, 41, 324092, tzinfo=UTC)


def test_an_sdk_without_dt_parse_keeps_its_parser(monkeypatch, caplog):
    module = importlib.import_module(SDK_MODULES[0])
    monkeypatch.setattr(module, "dt_parse", lambda text: text)
    assert install() is False
    assert module.dt_parse("x") == "x"  # type: ignore[attr-defined]
    assert "keep the SDK's parser" in caplog.text


def test_the_function_app_installs_it():
    import function_app  # noqa: F401 - importing the app is what installs the shortcut

    install()  # an earlier test may have put dateutil back; importing again does not re-run the module
    assert all(sys.modules[name].dt_parse is parse_timestamp for name in SDK_MODULES)  # type: ignore[attr-defined]


def dotnet_text(moment: datetime, tick: int, zone: str) -> str:
    """``moment`` (with a seventh digit ``tick``) as Json.NET writes it: ``.FFFFFFF`` drops trailing
    zeros, and the dot when nothing is left."""
    fraction = f"{moment.microsecond:06d}{tick}".rstrip("0")
    return f"{moment:%Y-%m-%dT%H:%M:%S}" + (f".{fraction}" if fraction else "") + zone


def _refuse(text: str, *args: Any, **kwargs: Any) -> datetime:
    raise AssertionError(f"{text!r} went to dateutil")


def test_the_format_helper_writes_what_dotnet_writes():
    assert dotnet_text(datetime(2019, 12, 8, 23, 18, 39, 756132), 0, "Z") == "2019-12-08T23:18:39.756132Z"
    assert dotnet_text(datetime(2019, 12, 8, 23, 18, 39), 0, "Z") == "2019-12-08T23:18:39Z"
    assert dotnet_text(datetime(2019, 12, 8, 23, 18, 39) + timedelta(microseconds=324092), 7, "") == (
        "2019-12-08T23:18:39.3240927")
