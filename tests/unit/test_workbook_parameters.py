"""Workbook parameters expand in query text as the portal expands them, and the local page refuses
choices the workbook does not offer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from local.workbook.evaluate import ResultTable, resolve_parameters
from local.workbook.model import Choice, DropdownParameter, WorkbookError, load_workbook, parse_workbook
from local.workbook.parameters import Context, DropdownValue, TimeRangeValue, substitute

NOW = datetime(2026, 1, 13, 2, 0, tzinfo=UTC)
OS = DropdownParameter(
    "OS",
    "OS",
    multi_select=True,
    quote="'",
    delimiter=",",
    select_all_value="*",
    default_all=True,
    choices=(Choice("Windows", "Windows"), Choice("Linux", "Linux")),
)


class Subscriptions:
    """The Subscription drop-down's query answers two subscriptions."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, timedelta | None]] = []

    def run(self, kql: str, timespan: timedelta | None) -> ResultTable:
        self.queries.append((kql, timespan))
        return ResultTable(("SubscriptionId",), ("string",), (("sub-a",), ("sub-b",)))


def test_time_range_becomes_a_time_generated_comparison_and_a_label():
    values = {"TimeRange": TimeRangeValue(timedelta(days=7))}
    assert (
        substitute("T | where TimeGenerated {TimeRange}", values, NOW) == "T | where TimeGenerated > ago(7d)"
    )
    assert substitute("{TimeRange}", values, NOW, Context.TEXT) == "Last 7 days"
    assert substitute("{TimeRange:start}..{TimeRange:end}", values, NOW) == (
        "2026-01-06T02:00:00.000Z..2026-01-13T02:00:00.000Z"
    )
    assert (
        substitute("{TimeRange:query}", {"TimeRange": TimeRangeValue(timedelta(hours=4))}, NOW) == "> ago(4h)"
    )


def test_multi_select_becomes_a_quoted_list_and_all_the_select_all_value():
    chosen = {"OS": DropdownValue(OS, (Choice("Windows", "Windows"), Choice("Linux", "Linux")))}
    assert substitute("OSType in ({OS})", chosen, NOW) == "OSType in ('Windows','Linux')"
    everything = {"OS": DropdownValue(OS, OS.choices, all_selected=True)}
    assert substitute('"*" in ({OS})', everything, NOW) == "\"*\" in ('*')"
    assert substitute("{OS:label}", chosen, NOW) == "Windows, Linux"


def test_an_undeclared_parameter_or_a_quote_in_a_value_is_refused():
    with pytest.raises(WorkbookError, match=r"\{Region\}"):
        substitute("where Region in ({Region})", {"OS": DropdownValue(OS, ())}, NOW)
    with pytest.raises(WorkbookError, match="quote"):
        DropdownValue(OS, (Choice("Linux') or true or ('", "x"),))


def test_the_repo_workbook_resolves_defaults_and_runs_parameter_queries_with_the_time_range():
    runner = Subscriptions()
    resolved = resolve_parameters(load_workbook(), {}, runner, NOW)
    subscription = resolved.values["Subscription"]
    assert isinstance(subscription, DropdownValue) and subscription.all_selected
    assert [c.value for c in subscription.selected] == ["sub-a", "sub-b"]
    [(kql, timespan)] = runner.queries
    assert "TimeGenerated > ago(7d)" in kql and timespan == timedelta(days=7)
    assert resolved.values["selectedTab"] == "overview"


def test_choices_outside_the_workbook_are_refused():
    workbook = load_workbook()
    with pytest.raises(WorkbookError, match="Subscription"):
        resolve_parameters(workbook, {"Subscription": ["sub-c"]}, Subscriptions(), NOW)
    with pytest.raises(WorkbookError, match="TimeRange"):
        resolve_parameters(workbook, {"TimeRange": ["5"]}, Subscriptions(), NOW)
    with pytest.raises(WorkbookError, match="selectedTab"):
        resolve_parameters(workbook, {"selectedTab": ["admin"]}, Subscriptions(), NOW)
    picked = resolve_parameters(workbook, {"OS": ["Linux"]}, Subscriptions(), NOW).values["OS"]
    assert isinstance(picked, DropdownValue) and [c.value for c in picked.selected] == ["Linux"]


def test_a_document_that_is_not_a_workbook_is_refused_with_the_field_named():
    with pytest.raises(WorkbookError, match="version"):
        parse_workbook({"items": []})
    with pytest.raises(WorkbookError, match=r"items\[0\].name"):
        parse_workbook({"version": "Notebook/1.0", "items": [{"type": 1, "content": {"json": "x"}}]})
