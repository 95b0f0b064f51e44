"""The machine list's query string, parsed and checked: filters, tag filters and paging.

Filters on stored properties go to the table service (an OData ``eq`` per filter); tag
filters are applied after, because tags are kept as one JSON property.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.fleet.placement import ASSET_CATEGORY, RING
from shared.model.assessment_outcome import Compliance, Readiness
from shared.model.machines import Environment, OsType, PowerState, Support

DEFAULT_PAGE_SIZE = 100
# Table Storage returns at most 1,000 entities per query response (Table service limits).
MAX_PAGE_SIZE = 1000


class QueryError(ValueError):
    """Bad query parameters: :attr:`field` the first, :attr:`details` each with its rule."""

    def __init__(self, field_name: str, message: str, details: tuple[tuple[str, str], ...] = ()) -> None:
        self.field = field_name
        self.message = message
        self.details = details or ((field_name, message),)
        super().__init__(f"{field_name}: {message}")


def _choices(values: list[str]) -> dict[str, str]:
    return {v.lower(): v for v in values}


# query parameter -> (stored property, accepted values by lower-case spelling)
_FILTERS: dict[str, tuple[str, dict[str, Any]]] = {
    "os": ("OsType", _choices([o.value for o in OsType])),
    "environment": ("Environment", _choices([e.value for e in Environment])),
    "support": ("Support", _choices([s.value for s in Support])),
    "powerState": ("PowerState", _choices([p.value for p in PowerState])),
    "readiness": ("Readiness", _choices([r.value for r in Readiness])),
    # false also lists machines whose compliance is Unknown; compliance=NonCompliant lists only the
    # machines proven to miss something (machines last assessed before Compliance existed lack it).
    "compliant": ("Compliant", {"true": True, "false": False}),
    "compliance": ("Compliance", _choices([c.value for c in Compliance])),
}
# Filters on a name as the table keeps it (an asset category's or ring's, shared.fleet.placement); the
# API matches the category's spelling before filtering (names are unique ignoring case).
NAME_FILTERS = {"category": ASSET_CATEGORY, "ring": RING}
# Category and ring names are at most 64 characters (shared.governance.categories' NAME_PATTERN).
MAX_NAME_FILTER_CHARS = 64
_PAGING = ("pageSize", "nextToken")
ACCEPTED_PARAMETERS = (*_FILTERS, *NAME_FILTERS, "tag", *_PAGING)


def filter_values() -> dict[str, list[str]]:
    """Each filter parameter's values as the API documents them (matched ignoring case)."""
    return {name: [key if isinstance(value, bool) else str(value) for key, value in accepted.items()]
            for name, (_column, accepted) in _FILTERS.items()}


@dataclass(frozen=True)
class MachineQuery:
    equals: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    page_size: int = DEFAULT_PAGE_SIZE
    next_token: str | None = None

    def matches_tags(self, entity: Mapping[str, Any]) -> bool:
        tags = json.loads(entity.get("Tags") or "{}")
        return all(tags.get(k) == v for k, v in self.tags.items())


def parse_machine_query(params: Mapping[str, str]) -> MachineQuery:
    """``params`` as the HTTP request gives them; ``tag`` may be ``key:value`` or several joined by ','.
    Every bad parameter is reported at once (one QueryError)."""
    problems: list[tuple[str, str]] = [
        (name, f"unknown parameter; accepted: {', '.join(ACCEPTED_PARAMETERS)}")
        for name in sorted(set(params) - set(ACCEPTED_PARAMETERS))
    ]
    equals: dict[str, Any] = {}
    for name, (column, accepted) in _FILTERS.items():
        if name in params:
            value = accepted.get(params[name].strip().lower())
            if value is None:
                problems.append((name, f"must be one of {', '.join(str(v) for v in accepted.values())}"))
            else:
                equals[column] = value
    for name, column in NAME_FILTERS.items():
        if name in params:
            value = params[name].strip()
            if not 1 <= len(value) <= MAX_NAME_FILTER_CHARS:
                problems.append((name, f"must be a name of 1 to {MAX_NAME_FILTER_CHARS} characters"))
            else:
                equals[column] = value
    tags: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in params.get("tag", "").split(","))):
        key, sep, value = pair.partition(":")
        if not sep or not key:
            problems.append(("tag", f"{pair!r} must be key:value"))
        else:
            tags[key] = value
    raw_size = params.get("pageSize", str(DEFAULT_PAGE_SIZE))
    if not raw_size.isdigit() or not 1 <= int(raw_size) <= MAX_PAGE_SIZE:
        problems.append(("pageSize", f"must be a whole number from 1 to {MAX_PAGE_SIZE}"))
    if problems:
        raise QueryError(*problems[0], details=tuple(problems))
    return MachineQuery(equals, tags, int(raw_size), params.get("nextToken") or None)
