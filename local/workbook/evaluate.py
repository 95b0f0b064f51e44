"""A workbook evaluated for one choice of parameters: what the portal would show, as plain JSON.

Queries go through :class:`LogsQueryRunner`, the real ``azure-monitor-query`` ``LogsQueryClient``
against the local Log Analytics, with exactly the workbook's KQL after parameter substitution; a
query item bound to the time range parameter (``timeContextFromParameter``) also sends it as the
query timespan, as the portal does. Groups hidden by their ``conditionalVisibility`` are left out,
and their queries are not run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError
from azure.monitor.query import LogsQueryClient, LogsQueryPartialResult, LogsQueryStatus

from local.workbook.model import (
    ALL_VALUE,
    Choice,
    DropdownParameter,
    GroupItem,
    Item,
    Parameter,
    ParametersItem,
    QueryItem,
    TabsItem,
    TextItem,
    TextParameter,
    TimeRangeParameter,
    Workbook,
    WorkbookError,
)
from local.workbook.parameters import (
    Context,
    DropdownValue,
    ParameterValue,
    TimeRangeValue,
    kql_timespan,
    substitute,
    time_range_label,
)

Selections = Mapping[str, Sequence[str]]


# A duration ending now, or an explicit (start, end), as LogsQueryClient's ``timespan`` takes.
Timespan = timedelta | tuple[datetime, datetime] | None


@dataclass(frozen=True)
class ResultTable:
    columns: tuple[str, ...]
    types: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


class QueryFailed(RuntimeError):
    """The query service refused or only partly answered a query; the message is the service's."""


class QueryRunner(Protocol):
    def run(self, kql: str, timespan: Timespan) -> ResultTable: ...


class LogsQueryRunner:
    """Runs KQL through ``LogsQueryClient`` against one workspace."""

    def __init__(
        self,
        endpoint: str,
        workspace_id: str,
        credential: TokenCredential,
        *,
        connection_verify: str | bool = True,
    ) -> None:
        self._workspace_id = workspace_id
        self._client = LogsQueryClient(credential, endpoint=endpoint, connection_verify=connection_verify)

    def run(self, kql: str, timespan: Timespan) -> ResultTable:
        try:
            result = self._client.query_workspace(self._workspace_id, kql, timespan=timespan)
        except HttpResponseError as error:
            raise QueryFailed(error.message or str(error)) from error
        if isinstance(result, LogsQueryPartialResult) or result.status is not LogsQueryStatus.SUCCESS:
            raise QueryFailed(f"partial result: {getattr(result, 'partial_error', None)}")
        table = result.tables[0]
        types = tuple(table.columns_types)
        rows = tuple(tuple(_parsed(v, t) for v, t in zip(row, types, strict=True)) for row in table.rows)
        return ResultTable(tuple(table.columns), types, rows)

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True)
class ResolvedParameters:
    values: dict[str, ParameterValue]
    views: list[dict[str, Any]]  # what the page shows for each parameter


def resolve_parameters(
    workbook: Workbook, selections: Selections, runner: QueryRunner, now: datetime
) -> ResolvedParameters:
    """Each parameter's value: the selection when it is one of the choices, else the default.

    A selection that is not one of the choices is refused (:class:`WorkbookError`), so nothing from
    a URL reaches a query that the workbook does not offer.
    """
    values: dict[str, ParameterValue] = {}
    views: list[dict[str, Any]] = []
    for parameter in workbook.parameters():
        requested = list(selections.get(parameter.name, ()))
        value, view = _resolve(parameter, requested, values, runner, now)
        values[parameter.name] = value
        views.append(view)
    tabs = workbook.tabs()
    if tabs is not None:
        requested = list(selections.get(tabs.parameter, ()))
        allowed = [t.value for t in tabs.tabs]
        if requested and requested[0] not in allowed:
            raise WorkbookError(f"{tabs.parameter}: {requested[0]!r} is not one of {', '.join(allowed)}")
        values[tabs.parameter] = requested[0] if requested else allowed[0]
    return ResolvedParameters(values, views)


def _resolve(
    parameter: Parameter,
    requested: list[str],
    known: Mapping[str, ParameterValue],
    runner: QueryRunner,
    now: datetime,
) -> tuple[ParameterValue, dict[str, Any]]:
    if isinstance(parameter, TimeRangeParameter):
        choices = {str(c // timedelta(milliseconds=1)): c for c in parameter.choices}
        chosen = parameter.default
        if requested:
            if requested[0] not in choices:
                raise WorkbookError(
                    f"{parameter.name}: {requested[0]!r} ms is not one of {', '.join(choices)}"
                )
            chosen = choices[requested[0]]
        ranges = [
            {"value": ms, "label": time_range_label(c), "selected": c == chosen} for ms, c in choices.items()
        ]
        return TimeRangeValue(chosen), _view(parameter.name, parameter.label, "timerange", False, ranges)
    if isinstance(parameter, TextParameter):
        text = requested[0] if requested else parameter.default
        return text, _view(
            parameter.name, parameter.label, "text", False, [{"value": text, "selected": True}]
        )
    options = _dropdown_choices(parameter, known, runner, now)
    by_value = {c.value: c for c in options}
    wants_all = requested == [ALL_VALUE] or (not requested and parameter.default_all)
    if wants_all and parameter.multi_select:
        value = DropdownValue(parameter, tuple(options), all_selected=True)
    else:
        unknown = [v for v in requested if v not in by_value]
        if unknown:
            raise WorkbookError(
                f"{parameter.name}: {', '.join(map(repr, unknown))} not among the choices "
                f"{', '.join(by_value) or '(none)'}"
            )
        picked = [by_value[v] for v in requested] or options[:1]
        value = DropdownValue(parameter, tuple(picked if parameter.multi_select else picked[:1]))
    rows = [
        {"value": c.value, "label": c.label, "selected": value.all_selected or c in value.selected}
        for c in options
    ]
    if parameter.multi_select:
        rows.insert(0, {"value": ALL_VALUE, "label": "All", "selected": value.all_selected})
    return value, _view(parameter.name, parameter.label, "dropdown", parameter.multi_select, rows)


def _dropdown_choices(
    parameter: DropdownParameter, known: Mapping[str, ParameterValue], runner: QueryRunner, now: datetime
) -> list[Choice]:
    if parameter.query is None:
        return list(parameter.choices)
    table = runner.run(
        substitute(parameter.query, known, now), _timespan(parameter.time_from_parameter, known)
    )
    label_at = table.columns.index("label") if "label" in table.columns else 0
    return [Choice(str(row[0]), str(row[label_at])) for row in table.rows if row[0] not in (None, "")]


def _view(name: str, label: str, kind: str, multi: bool, options: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "label": label, "kind": kind, "multiSelect": multi, "options": options}


def _timespan(parameter: str | None, values: Mapping[str, ParameterValue]) -> timedelta | None:
    if parameter is None:
        return None
    value = values.get(parameter)
    if not isinstance(value, TimeRangeValue):
        raise WorkbookError(f"timeContextFromParameter: {parameter!r} is not a time range parameter")
    return value.duration


def run_query_item(
    item: QueryItem, values: Mapping[str, ParameterValue], runner: QueryRunner, now: datetime
) -> ResultTable:
    """One query item as the portal runs it: substituted KQL, plus the bound time range as timespan."""
    return runner.run(substitute(item.query, values, now), _timespan(item.time_from_parameter, values))


def evaluate(
    workbook: Workbook, selections: Selections, runner: QueryRunner, now: datetime
) -> dict[str, Any]:
    """The page's document: parameters with their choices, and each visible item with its result."""
    resolved = resolve_parameters(workbook, selections, runner, now)
    return {
        "parameters": resolved.views,
        "selections": {name: _selection(value) for name, value in resolved.values.items()},
        "items": _evaluate_items(workbook.items, resolved, runner, now),
    }


def _selection(value: ParameterValue) -> list[str]:
    if isinstance(value, TimeRangeValue):
        return [str(value.duration // timedelta(milliseconds=1))]
    if isinstance(value, DropdownValue):
        return [ALL_VALUE] if value.all_selected else [c.value for c in value.selected]
    return [value]


def _evaluate_items(
    items: Sequence[Item], resolved: ResolvedParameters, runner: QueryRunner, now: datetime
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    values = resolved.values
    for item in items:
        if isinstance(item, TextItem):
            out.append(
                {
                    "kind": "text",
                    "name": item.name,
                    "markdown": substitute(item.markdown, values, now, Context.TEXT),
                }
            )
        elif isinstance(item, ParametersItem):
            names = {p.name for p in item.parameters}
            out.append(
                {
                    "kind": "parameters",
                    "name": item.name,
                    "parameters": [v for v in resolved.views if v["name"] in names],
                }
            )
        elif isinstance(item, TabsItem):
            out.append(
                {
                    "kind": "tabs",
                    "name": item.name,
                    "parameter": item.parameter,
                    "tabs": [
                        {"label": t.label, "value": t.value, "selected": values[item.parameter] == t.value}
                        for t in item.tabs
                    ],
                }
            )
        elif isinstance(item, GroupItem):
            visible = (
                item.visible_when is None
                or values.get(item.visible_when.parameter) == item.visible_when.value
            )
            if visible:
                out.append(
                    {
                        "kind": "group",
                        "name": item.name,
                        "items": _evaluate_items(item.items, resolved, runner, now),
                    }
                )
        else:
            out.append(_evaluate_query(item, values, runner, now))
    return out


def _evaluate_query(
    item: QueryItem, values: Mapping[str, ParameterValue], runner: QueryRunner, now: datetime
) -> dict[str, Any]:
    kql = substitute(item.query, values, now)
    view: dict[str, Any] = {
        "kind": "query",
        "name": item.name,
        "title": item.title,
        "visualization": item.visualization,
        "widthPercent": item.width_percent,
        "seriesColours": dict(item.series_colours),
        "noDataMessage": item.no_data_message,
        "kql": kql,
        "timespan": None,
        "columns": [],
        "rows": [],
        "error": None,
    }
    timespan = _timespan(item.time_from_parameter, values)
    if timespan is not None:
        view["timespan"] = kql_timespan(timespan)
    try:
        table = runner.run(kql, timespan)
    except QueryFailed as error:
        view["error"] = str(error)
        return view
    view["columns"] = [{"name": n, "type": t} for n, t in zip(table.columns, table.types, strict=True)]
    view["rows"] = [[_json_value(v) for v in row] for row in table.rows]
    return view


def _parsed(value: Any, kind: str) -> Any:
    """Dynamic values travel as JSON text; the client hands them over as text, so parse them here."""
    if kind == "dynamic" and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    return value
