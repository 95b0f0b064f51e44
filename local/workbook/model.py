"""An Azure Monitor workbook file read into typed items: the subset of the format this repo's workbook uses.

The format is the portal's ("Notebook/1.0", see the ``$schema`` in the file). Item types by their
``type`` number: 1 text (markdown), 3 query (``KqlItem/1.0``), 9 parameters, 11 links (tabs),
12 group. Parameter types: 1 text, 2 drop-down, 4 time range. Anything else is refused with the
item and field named, so the local page never silently shows less than the portal would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKBOOK_FILE = REPO_ROOT / "infra" / "workbooks" / "update-management.json"
NOTEBOOK_VERSION = "Notebook/1.0"

# Workbook item and parameter type numbers (the portal's serialized format).
TEXT_ITEM, QUERY_ITEM, PARAMETERS_ITEM, LINKS_ITEM, GROUP_ITEM = 1, 3, 9, 11, 12
TEXT_PARAMETER, DROPDOWN_PARAMETER, TIME_RANGE_PARAMETER = 1, 2, 4
# A multi-select drop-down's "All" entry, as the portal stores it in value/defaultValue.
ALL_VALUE = "value::all"
# Log Analytics queries; other query types (Resource Graph, ARM, metrics) are not used here.
LOGS_QUERY_TYPE = 0
VISUALIZATIONS = frozenset({"table", "tiles", "piechart", "barchart"})


class WorkbookError(ValueError):
    """The workbook file, or a parameter choice, breaks a rule; the message names the item and field."""


@dataclass(frozen=True)
class Choice:
    value: str
    label: str


@dataclass(frozen=True)
class TimeRangeParameter:
    name: str
    label: str
    default: timedelta
    choices: tuple[timedelta, ...]


@dataclass(frozen=True)
class DropdownParameter:
    name: str
    label: str
    multi_select: bool
    quote: str
    delimiter: str
    select_all_value: str | None  # what "All" expands to; None: every value
    default_all: bool
    choices: tuple[Choice, ...] = ()  # static (jsonData)
    query: str | None = None  # dynamic: the first column is the value
    time_from_parameter: str | None = None


@dataclass(frozen=True)
class TextParameter:
    name: str
    label: str
    default: str


Parameter = TimeRangeParameter | DropdownParameter | TextParameter


@dataclass(frozen=True)
class TextItem:
    name: str
    markdown: str


@dataclass(frozen=True)
class ParametersItem:
    name: str
    parameters: tuple[Parameter, ...]


@dataclass(frozen=True)
class Tab:
    label: str
    value: str


@dataclass(frozen=True)
class TabsItem:
    name: str
    parameter: str
    tabs: tuple[Tab, ...]


@dataclass(frozen=True)
class QueryItem:
    name: str
    title: str
    query: str
    visualization: str
    time_from_parameter: str | None
    no_data_message: str
    width_percent: int | None = None
    # chartSettings.seriesLabelSettings: a chart's colour by series (or slice) name, as Workbooks names them.
    series_colours: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Visibility:
    parameter: str
    value: str


@dataclass(frozen=True)
class GroupItem:
    name: str
    items: tuple[Item, ...]
    visible_when: Visibility | None


Item = TextItem | ParametersItem | TabsItem | QueryItem | GroupItem


@dataclass(frozen=True)
class Workbook:
    items: tuple[Item, ...]

    def parameters(self) -> tuple[Parameter, ...]:
        return tuple(
            p for item in _walk(self.items) if isinstance(item, ParametersItem) for p in item.parameters
        )

    def query_items(self) -> tuple[QueryItem, ...]:
        """Every query of the workbook, visible or not."""
        return tuple(item for item in _walk(self.items) if isinstance(item, QueryItem))

    def tabs(self) -> TabsItem | None:
        return next((item for item in _walk(self.items) if isinstance(item, TabsItem)), None)


def _walk(items: tuple[Item, ...]) -> list[Item]:
    found: list[Item] = []
    for item in items:
        found.append(item)
        if isinstance(item, GroupItem):
            found.extend(_walk(item.items))
    return found


def load_workbook(path: Path = WORKBOOK_FILE) -> Workbook:
    return parse_workbook(json.loads(path.read_text(encoding="utf-8")))


def parse_workbook(document: Any) -> Workbook:
    if not isinstance(document, dict) or document.get("version") != NOTEBOOK_VERSION:
        raise WorkbookError(
            f"version: a workbook document must be an object with version {NOTEBOOK_VERSION!r}"
        )
    items = _items(document.get("items"), "items")
    names = [item.name for item in _walk(items)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise WorkbookError(f"items: item names must be unique, repeated: {', '.join(duplicates)}")
    return Workbook(items)


def _items(raw: Any, where: str) -> tuple[Item, ...]:
    if not isinstance(raw, list):
        raise WorkbookError(f"{where}: must be a list of items")
    return tuple(_item(entry, f"{where}[{index}]") for index, entry in enumerate(raw))


def _item(raw: Any, where: str) -> Item:
    if not isinstance(raw, dict) or not isinstance(raw.get("content"), dict):
        raise WorkbookError(f"{where}: an item is an object with type, content and name")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise WorkbookError(f"{where}.name: every item needs a name (the local page and tests refer to it)")
    where = f"{where} ({name})"
    content: dict[str, Any] = raw["content"]
    kind = raw.get("type")
    if kind == TEXT_ITEM:
        return TextItem(name, _text(content, "json", where))
    if kind == PARAMETERS_ITEM:
        return ParametersItem(
            name, tuple(_parameter(p, f"{where}.parameters") for p in content.get("parameters", []))
        )
    if kind == LINKS_ITEM:
        return _tabs(name, content, where)
    if kind == QUERY_ITEM:
        return _query(name, content, where, raw.get("customWidth"))
    if kind == GROUP_ITEM:
        return GroupItem(
            name,
            _items(content.get("items"), f"{where}.content.items"),
            _visibility(raw.get("conditionalVisibility"), where),
        )
    raise WorkbookError(f"{where}.type: item type {kind!r} is not one of 1, 3, 9, 11, 12")


def _text(content: dict[str, Any], key: str, where: str) -> str:
    value = content.get(key)
    if not isinstance(value, str):
        raise WorkbookError(f"{where}.content.{key}: must be a string")
    return value


def _tabs(name: str, content: dict[str, Any], where: str) -> TabsItem:
    if content.get("style") != "tabs":
        raise WorkbookError(f"{where}.content.style: only tab links are supported")
    links = content.get("links") or []
    parameters = {link.get("cellValue") for link in links}
    if len(parameters) != 1 or any(link.get("linkTarget") != "parameter" for link in links):
        raise WorkbookError(
            f"{where}.content.links: every tab must set the same parameter (linkTarget parameter)"
        )
    tabs = tuple(Tab(str(link["linkLabel"]), str(link["subTarget"])) for link in links)
    return TabsItem(name, str(parameters.pop()), tabs)


def _query(name: str, content: dict[str, Any], where: str, width: Any) -> QueryItem:
    if content.get("queryType") != LOGS_QUERY_TYPE:
        raise WorkbookError(f"{where}.content.queryType: only Log Analytics queries (0) are supported")
    visualization = content.get("visualization", "table")
    if visualization not in VISUALIZATIONS:
        raise WorkbookError(
            f"{where}.content.visualization: {visualization!r} is not one of {sorted(VISUALIZATIONS)}"
        )
    return QueryItem(
        name=name,
        title=str(content.get("title") or name),
        query=_text(content, "query", where),
        visualization=visualization,
        time_from_parameter=content.get("timeContextFromParameter"),
        no_data_message=str(content.get("noDataMessage") or "The query returned no results."),
        width_percent=int(width) if width else None,
        series_colours=_series_colours(content.get("chartSettings"), f"{where}.content.chartSettings"),
    )


def _series_colours(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    settings = raw.get("seriesLabelSettings", []) if isinstance(raw, dict) else None
    if not isinstance(settings, list) or not all(isinstance(s, dict) for s in settings):
        raise WorkbookError(f"{where}.seriesLabelSettings: a list of {{seriesName, color}} is required")
    return tuple((str(s["seriesName"]), str(s["color"]))
                 for s in settings if s.get("seriesName") and s.get("color"))


def _visibility(raw: Any, where: str) -> Visibility | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("comparison") != "isEqualTo":
        raise WorkbookError(f"{where}.conditionalVisibility: only isEqualTo comparisons are supported")
    return Visibility(str(raw["parameterName"]), str(raw["value"]))


def _parameter(raw: Any, where: str) -> Parameter:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise WorkbookError(f"{where}: a parameter is an object with a name")
    name = raw["name"]
    where = f"{where} ({name})"
    label = str(raw.get("label") or name)
    kind = raw.get("type")
    if kind == TIME_RANGE_PARAMETER:
        default = _duration(raw.get("value"), f"{where}.value")
        settings = raw.get("typeSettings") or {}
        choices = tuple(
            _duration(v, f"{where}.typeSettings.selectableValues")
            for v in settings.get("selectableValues") or [raw.get("value")]
        )
        return TimeRangeParameter(name, label, default, choices)
    if kind == DROPDOWN_PARAMETER:
        return _dropdown(raw, name, label, where)
    if kind == TEXT_PARAMETER:
        return TextParameter(name, label, str(raw.get("value") or ""))
    raise WorkbookError(
        f"{where}.type: parameter type {kind!r} is not one of 1 (text), 2 (drop-down), 4 (time range)"
    )


def _duration(raw: Any, where: str) -> timedelta:
    if not isinstance(raw, dict) or not isinstance(raw.get("durationMs"), int) or raw["durationMs"] <= 0:
        raise WorkbookError(f"{where}: a relative time range {{'durationMs': N}} with N > 0 is required")
    return timedelta(milliseconds=raw["durationMs"])


def _dropdown(raw: dict[str, Any], name: str, label: str, where: str) -> DropdownParameter:
    settings = raw.get("typeSettings") or {}
    query = raw.get("query")
    choices: tuple[Choice, ...] = ()
    if query is None:
        try:
            entries = json.loads(raw.get("jsonData") or "")
        except ValueError:
            raise WorkbookError(
                f"{where}.jsonData: a drop-down needs a query or jsonData (a JSON list)"
            ) from None
        choices = tuple(
            Choice(str(e["value"]), str(e.get("label") or e["value"]))
            if isinstance(e, dict)
            else Choice(str(e), str(e))
            for e in entries
        )
    elif raw.get("queryType") != LOGS_QUERY_TYPE:
        raise WorkbookError(f"{where}.queryType: only Log Analytics queries (0) are supported")
    value = raw.get("value")
    return DropdownParameter(
        name=name,
        label=label,
        multi_select=bool(raw.get("multiSelect")),
        quote=str(raw.get("quote", "'")),
        delimiter=str(raw.get("delimiter", ",")),
        select_all_value=settings.get("selectAllValue"),
        default_all=value == [ALL_VALUE] or raw.get("defaultValue") == ALL_VALUE,
        choices=choices,
        query=query,
        time_from_parameter=raw.get("timeContextFromParameter"),
    )
