"""Parameter values and their substitution into query text, as the workbook portal expands them.

- A time range in a query (``{TimeRange}``, ``{TimeRange:query}`` or ``{TimeRange:value}``) becomes a
  comparison to append to a column, ``> ago(7d)``; ``{TimeRange:label}`` is "Last 7 days";
  ``{TimeRange:start}`` / ``{TimeRange:end}`` are ISO 8601 instants. In markdown the bare reference is
  the label.
- A multi-select drop-down becomes its values, each wrapped in the parameter's ``quote`` and joined
  with its ``delimiter`` (``'Linux','Windows'``), for use in ``in (...)``. "All" becomes the
  ``selectAllValue`` in quotes when the parameter sets one (``'*'``), otherwise every value.
  ``{Name:label}`` is the labels joined with ", ".
- A single-select drop-down or a text parameter is its value as it is.

A reference to a parameter the workbook does not declare is an error here; the portal would leave
the query waiting for it, which on a local page would only look like missing data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from local.workbook.model import Choice, DropdownParameter, WorkbookError

_REFERENCE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z]+))?\}")
_UNITS = (("d", timedelta(days=1)), ("h", timedelta(hours=1)), ("m", timedelta(minutes=1)),
          ("s", timedelta(seconds=1)))  # fmt: skip


class Context(Enum):
    QUERY = "query"
    TEXT = "text"


@dataclass(frozen=True)
class TimeRangeValue:
    """A relative range: the ``duration`` before the query runs."""

    duration: timedelta

    def label(self) -> str:
        return time_range_label(self.duration)


@dataclass(frozen=True)
class DropdownValue:
    parameter: DropdownParameter
    selected: tuple[Choice, ...]
    all_selected: bool = False

    def __post_init__(self) -> None:
        for choice in self.selected:
            if self.parameter.quote and self.parameter.quote in choice.value:
                raise WorkbookError(
                    f"{self.parameter.name}: value {choice.value!r} contains the quote character "
                    f"{self.parameter.quote!r}, which would end the string in the query"
                )


ParameterValue = TimeRangeValue | DropdownValue | str


def kql_timespan(duration: timedelta) -> str:
    """``7d``, ``12h``, ``30m``, ``45s`` or ``1500ms``: the largest whole unit."""
    for suffix, unit in _UNITS:
        if duration % unit == timedelta(0):
            return f"{duration // unit}{suffix}"
    return f"{duration // timedelta(milliseconds=1)}ms"


def time_range_label(duration: timedelta) -> str:
    """The portal's wording: "Last hour", "Last 24 hours", "Last 48 hours", "Last 7 days"."""
    if duration in (timedelta(days=1), timedelta(days=2)):
        return f"Last {duration // timedelta(hours=1)} hours"
    text = kql_timespan(duration)
    unit = text.lstrip("0123456789")
    amount = int(text[: len(text) - len(unit)])
    names = {"d": "day", "h": "hour", "m": "minute", "s": "second", "ms": "millisecond"}
    return f"Last {names[unit]}" if amount == 1 else f"Last {amount} {names[unit]}s"


def format_value(name: str, value: ParameterValue, fmt: str | None, context: Context, now: datetime) -> str:
    """One reference ``{name}`` or ``{name:fmt}`` expanded."""
    if isinstance(value, TimeRangeValue):
        if fmt in ("query", "value") or (fmt is None and context is Context.QUERY):
            return f"> ago({kql_timespan(value.duration)})"
        if fmt in ("label", None):
            return value.label()
        if fmt == "start":
            return _iso(now - value.duration)
        if fmt == "end":
            return _iso(now)
        raise WorkbookError(
            f"{{{name}:{fmt}}}: a time range supports :query, :value, :label, :start and :end"
        )
    if isinstance(value, DropdownValue):
        if fmt == "label":
            return ", ".join(c.label for c in value.selected)
        if fmt not in (None, "value"):
            raise WorkbookError(f"{{{name}:{fmt}}}: a drop-down supports :value and :label")
        parameter = value.parameter
        if not parameter.multi_select:
            return value.selected[0].value if value.selected else ""
        if value.all_selected and parameter.select_all_value is not None:
            return f"{parameter.quote}{parameter.select_all_value}{parameter.quote}"
        return parameter.delimiter.join(
            f"{parameter.quote}{c.value}{parameter.quote}" for c in value.selected
        )
    if fmt not in (None, "value", "label"):
        raise WorkbookError(f"{{{name}:{fmt}}}: a text parameter supports :value and :label")
    return value


def substitute(
    text: str, values: Mapping[str, ParameterValue], now: datetime, context: Context = Context.QUERY
) -> str:
    """``text`` with every ``{Parameter}`` reference expanded; an undeclared parameter is an error."""

    def expand(match: re.Match[str]) -> str:
        name, fmt = match.group(1), match.group(2)
        if name not in values:
            raise WorkbookError(
                f"{{{name}}}: no parameter of that name; declared: {', '.join(sorted(values))}"
            )
        return format_value(name, values[name], fmt, context, now)

    return _REFERENCE.sub(expand, text)


def referenced_parameters(text: str) -> set[str]:
    return {m.group(1) for m in _REFERENCE.finditer(text)}


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
