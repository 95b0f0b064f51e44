"""Which machines an assessment covers: subscriptions, resource groups, locations, tags, OS, explicit ids.

One typed :class:`AssessmentScope` is parsed at the edge (the HTTP body, the timer's OS) and
travels as its JSON form between functions; :meth:`AssessmentScope.matches` is the single
place that decides whether a discovered :class:`Machine` is in. Every filter narrows: an
empty filter means "no restriction". Errors name the field and the rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from shared.model.machines import RESOURCE_ID_SCHEMA_PATTERN, Machine, OsType, parse_resource_id

_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
# ARM resource group names: 1-90 characters of letters, digits, '_', '-', '.', '(' and ')',
# not ending in '.' (ARM naming rules for Microsoft.Resources/resourceGroups).
_RESOURCE_GROUP = re.compile(r"^[-\w.()]{0,89}[-\w()]$")
# Azure region names are lower-case letters and digits (eastus2, westeurope).
_LOCATION = re.compile(r"^[a-z0-9]{2,40}$")
# A tag name is at most 512 characters and a value at most 256 (ARM tag limits).
MAX_TAG_NAME = 512
MAX_TAG_VALUE = 256
# Explicit machine lists are for targeted runs; a whole fleet is selected by filters, so a list
# this long is a mistake (and the request body would approach the HTTP size limits).
MAX_MACHINE_IDS = 1000
ANY_VALUE = "*"  # a tag filter value that matches any value, i.e. "the tag is present"

_FIELDS = (
    "all", "subscriptionIds", "resourceGroups", "locations", "tags", "tagMatch", "osType", "machineIds",
)
# What an on-demand request must say when it means every machine: an empty body never does.
_SAY_ALL = (
    'say {"all": true} to assess every machine in TARGET_SUBSCRIPTION_IDS, or name a scope '
    "(subscriptionIds, resourceGroups, locations, tags, osType, machineIds)"
)


class ScopeError(ValueError):
    """A scope that cannot be used; :attr:`field` is the JSON field at fault."""

    def __init__(self, field_name: str, rule: str) -> None:
        super().__init__(f"{field_name}: {rule}")
        self.field = field_name


class TagMatch(StrEnum):
    ALL = "all"  # every listed tag must match
    ANY = "any"  # at least one listed tag must match


@dataclass(frozen=True)
class AssessmentScope:
    subscription_ids: tuple[str, ...] = ()
    resource_groups: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    tag_match: TagMatch = TagMatch.ALL
    os_type: OsType | None = None
    machine_ids: tuple[str, ...] = ()
    # ``{"all": true}``: every machine, said on purpose (an on-demand request must say it or name a filter).
    everything: bool = False

    @classmethod
    def parse(cls, body: Any) -> AssessmentScope:
        """Parse the JSON form (camelCase fields); unknown fields are refused, not ignored."""
        if body is None:
            return cls()
        if not isinstance(body, Mapping):
            raise ScopeError("body", "must be a JSON object")
        unknown = sorted(set(body) - set(_FIELDS))
        if unknown:
            raise ScopeError(unknown[0], f"unknown field; allowed: {', '.join(_FIELDS)}")
        everything = body.get("all", False)
        if not isinstance(everything, bool):
            raise ScopeError("all", "must be true or false")
        scope = cls(
            everything=everything,
            subscription_ids=tuple(
                _check(v, _GUID, "subscriptionIds", "must be a GUID").lower()
                for v in _strings(body, "subscriptionIds")
            ),
            resource_groups=tuple(
                _check(
                    v, _RESOURCE_GROUP, "resourceGroups", "must be a resource group name (1-90 characters)"
                )
                for v in _strings(body, "resourceGroups")
            ),
            locations=tuple(
                _check(
                    v.lower().replace(" ", ""), _LOCATION, "locations", "must be an Azure region like eastus2"
                )
                for v in _strings(body, "locations")
            ),
            tags=_tags(body.get("tags")),
            tag_match=_enum(TagMatch, body.get("tagMatch", "all"), "tagMatch"),
            os_type=_os_type(body.get("osType")),
            machine_ids=_machine_ids(body),
        )
        if everything and scope.narrows():
            raise ScopeError("all", "true selects every machine; leave it out to narrow by the other fields")
        return scope

    @classmethod
    def parse_request(cls, body: Any) -> AssessmentScope:
        """An on-demand request's scope: ``{"all": true}`` or at least one filter. An empty body, ``null``
        or ``{}`` is refused, so a mistake never assesses the whole fleet."""
        if body is None:
            raise ScopeError("body", _SAY_ALL)
        scope = cls.parse(body)
        if not scope.everything and not scope.narrows():
            raise ScopeError("body", _SAY_ALL)
        return scope

    def narrows(self) -> bool:
        """Whether any filter restricts the machines (``tagMatch`` alone does not)."""
        return bool(self.subscription_ids or self.resource_groups or self.locations or self.tags
                    or self.os_type is not None or self.machine_ids)

    def to_json(self) -> dict[str, Any]:
        """The JSON form :meth:`parse` reads back (what crosses Durable boundaries)."""
        body: dict[str, Any] = {
            "subscriptionIds": list(self.subscription_ids),
            "resourceGroups": list(self.resource_groups),
            "locations": list(self.locations),
            "tags": dict(self.tags),
            "tagMatch": self.tag_match.value,
            "machineIds": list(self.machine_ids),
        }
        if self.os_type is not None:
            body["osType"] = self.os_type.value
        if self.everything:
            body["all"] = True
        return body

    def subscriptions(self, managed: Iterable[str]) -> tuple[str, ...]:
        """The subscriptions to list: the scope's own (or those its machine ids name), within ``managed``."""
        allowed = tuple(s.lower() for s in managed)
        named = self.subscription_ids or tuple(
            dict.fromkeys(parse_resource_id(m).subscription_id for m in self.machine_ids)
        )
        outside = sorted(set(named) - set(allowed))
        if outside:
            field_name = "subscriptionIds" if self.subscription_ids else "machineIds"
            raise ScopeError(field_name, f"{', '.join(outside)} not in TARGET_SUBSCRIPTION_IDS")
        return named or allowed

    def matches(self, machine: Machine) -> bool:
        if self.subscription_ids and machine.subscription_id.lower() not in self.subscription_ids:
            return False
        if self.resource_groups and machine.resource_group.lower() not in {
            g.lower() for g in self.resource_groups
        }:
            return False
        if self.locations and machine.location.lower().replace(" ", "") not in self.locations:
            return False
        if self.os_type is not None and machine.os_type is not self.os_type:
            return False
        if self.machine_ids and machine.resource_id.lower() not in {m.lower() for m in self.machine_ids}:
            return False
        return self._tags_match(machine.tags)

    def filter(self, machines: Iterable[Machine]) -> list[Machine]:
        return [m for m in machines if self.matches(m)]

    def _tags_match(self, machine_tags: Mapping[str, str]) -> bool:
        if not self.tags:
            return True
        # Tag names are case-insensitive in ARM; values are compared as written.
        lowered = {k.lower(): v for k, v in machine_tags.items()}
        hits = [
            k.lower() in lowered and (v == ANY_VALUE or lowered[k.lower()] == v) for k, v in self.tags.items()
        ]
        return all(hits) if self.tag_match is TagMatch.ALL else any(hits)


def scope_json_schema() -> dict[str, Any]:
    """The JSON Schema of the body :meth:`AssessmentScope.parse` reads, from the same rules. It shows the
    canonical spellings; the parser also takes other cases (osType, tagMatch) and spaces in locations."""

    def strings(pattern: str, **bounds: int) -> dict[str, Any]:
        return {"type": "array", "items": {"type": "string", "pattern": pattern}, **bounds}

    properties: dict[str, Any] = {
        "all": {"type": "boolean", "description": "true: every machine (alone; an on-demand assessment "
                "must say this or name a filter)"},
        "subscriptionIds": strings(_GUID.pattern),
        "resourceGroups": strings(_RESOURCE_GROUP.pattern),
        "locations": strings(_LOCATION.pattern),
        "tags": {"type": "object", "propertyNames": {"minLength": 1, "maxLength": MAX_TAG_NAME},
                 "additionalProperties": {"type": "string", "maxLength": MAX_TAG_VALUE},
                 "description": f"tag name to value; {ANY_VALUE!r} matches any value"},
        "tagMatch": {"enum": [m.value for m in TagMatch], "default": TagMatch.ALL.value},
        "osType": {"enum": [o.value for o in OsType]},
        "machineIds": strings(RESOURCE_ID_SCHEMA_PATTERN, maxItems=MAX_MACHINE_IDS),
    }  # fmt: skip
    return {"type": "object", "additionalProperties": False, "properties": properties}


def _strings(body: Mapping[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ScopeError(name, "must be a list of non-empty strings")
    return [v.strip() for v in value]


def _check(value: str, pattern: re.Pattern[str], name: str, rule: str) -> str:
    if not pattern.match(value):
        raise ScopeError(name, f"{value!r} {rule}")
    return value


def _tags(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ScopeError("tags", 'must be an object of tag name to value, e.g. {"env": "prod"}')
    for key, tag_value in value.items():
        if not key or len(key) > MAX_TAG_NAME:
            raise ScopeError("tags", f"tag names must be 1-{MAX_TAG_NAME} characters")
        if not isinstance(tag_value, str) or len(tag_value) > MAX_TAG_VALUE:
            raise ScopeError(
                f"tags.{key}",
                f"must be a string of at most {MAX_TAG_VALUE} characters (or {ANY_VALUE!r} for any value)",
            )
    return dict(value)


def _enum(kind: type[TagMatch], value: Any, name: str) -> TagMatch:
    try:
        return kind(str(value).lower())
    except ValueError:
        raise ScopeError(name, "must be one of " + ", ".join(m.value for m in kind)) from None


def _os_type(value: Any) -> OsType | None:
    if value is None:
        return None
    for os_type in OsType:
        if isinstance(value, str) and value.lower() == os_type.value.lower():
            return os_type
    raise ScopeError("osType", "must be Windows or Linux")


def _machine_ids(body: Mapping[str, Any]) -> tuple[str, ...]:
    ids = _strings(body, "machineIds")
    if len(ids) > MAX_MACHINE_IDS:
        raise ScopeError("machineIds", f"at most {MAX_MACHINE_IDS} machines; select larger sets with filters")
    for resource_id in ids:
        try:
            parse_resource_id(resource_id)
        except ValueError as error:
            raise ScopeError("machineIds", str(error)) from None
    return tuple(ids)
