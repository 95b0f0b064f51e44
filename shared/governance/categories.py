"""Asset categories: which machines belong together, in which rings they are patched, and their rules.

A category (the seed's "baselining" stage) names a set of machines by membership filters (the rules of
:class:`shared.fleet.scope.AssessmentScope`) and/or a saved log search, and carries what governs them:
role, business criticality (1 = most critical), owner, deadlines per classification group, whether
installs need approval, the test evidence a patch needs, an optional automatic approval rule, and its
rings (the first is the test ring; the last takes every machine of the category no earlier ring took).

A machine belongs to the first category whose membership it matches, categories taken by ``priority``
(lower first, then name), or to :data:`UNCATEGORISED`. :func:`categorise` decides that, purely: saved
searches are run by the caller (once per discovery pass or re-evaluation) and passed in as their members.

The HTTP body is parsed by :func:`validate_category`, which reports every invalid field at once in one
:class:`CategoryError` (each a dotted camelCase path with its rule), as deployment definitions do.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from shared.fleet.scope import AssessmentScope, ScopeError, TagMatch, scope_json_schema
from shared.model.classification import Classification, read_class
from shared.model.machines import Machine, OsType
from shared.model.validation import NAME_PATTERN, NAME_RULE, SavedSearch, field_errors
from shared.safety.policy import SafetyPolicy

# A machine no category takes. Reserved: no category may have this name.
UNCATEGORISED = "uncategorised"
# The ring of a category that says none (the design of issue 13).
DEFAULT_RING = "production"
# Rings are stages of a rollout (test, pilot, production, ...); ten is far past any real plan and
# bounds the work of placing a machine.
MAX_RINGS = 10
# Each saved search is one Log Analytics query per discovery pass; a category and its rings have at
# most 1 + MAX_RINGS, and the categories at most MAX_CATEGORIES: the pass runs at most a few hundred.
MAX_CATEGORIES = 100
# Deadline defaults in days per classification group (issue 13: "critical 7 days, security 14, other 60").
DEFAULT_DEADLINES = {"critical": 7, "security": 14, "other": 60}
# A deadline longer than ten years is a typing mistake, not a policy.
MAX_DEADLINE_DAYS = 3650
# Test evidence defaults (design of issue 13): one machine of the test ring, a day of bake time.
DEFAULT_MIN_MACHINES = 1
DEFAULT_BAKE_HOURS = 24
# A test ring of more than 1,000 machines is a production ring; a year of bake time is the longest wait.
MAX_MIN_MACHINES = 1000
MAX_BAKE_HOURS = 8760
# Priority and patch order: lower first; a middle default leaves room both ways. The bound keeps the
# value an Int32 in Table Storage and readable.
DEFAULT_PRIORITY = 100
DEFAULT_PATCH_ORDER = 100
MAX_ORDER = 1_000_000
# Business criticality, 1 = most critical (issue 13: "business criticality (1-4)").
MIN_CRITICALITY = 1
MAX_CRITICALITY = 4
# Free text people write: a line for a role or an owner's name, a paragraph for a description.
MAX_DESCRIPTION_CHARS = 2000
MAX_LINE_CHARS = 256

_SCOPE_FIELDS = ("subscriptionIds", "resourceGroups", "locations", "tags", "tagMatch", "osType", "machineIds")


class DeadlineGroup(StrEnum):
    """The classification groups deadlines and automatic approval are set per."""

    CRITICAL = "critical"
    SECURITY = "security"
    OTHER = "other"


def classification_group(os_type: OsType, classification: str) -> DeadlineGroup:
    """Windows "Critical Updates" and Linux Critical -> critical; "Security Updates", Linux Security and
    Security-ESM -> security; every other class -> other. Any spelling Azure uses is read
    (:func:`shared.model.classification.read_class`)."""
    found = read_class(os_type, classification)
    if found is Classification.CRITICAL:
        return DeadlineGroup.CRITICAL
    if found is Classification.SECURITY:
        return DeadlineGroup.SECURITY
    return DeadlineGroup.OTHER


class CategoryError(ValueError):
    """An invalid category; :attr:`field` is the dotted camelCase path of the first field at fault,
    :attr:`details` every field at fault with its rule (read by ``functions.http.invalid_fields``)."""

    def __init__(self, field_name: str, message: str, details: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message
        self.details: tuple[tuple[str, str], ...] = tuple(details) or ((field_name, message),)


class SearchUnavailable(LookupError):
    """A saved search whose members are not known (it never ran, or failed): whether a machine passing
    the other filters is a member cannot be told; the caller keeps the machine's stored placement."""

    def __init__(self, key: str) -> None:
        super().__init__(f"the saved search of {key!r} has no result to place machines with")
        self.key = key


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


def _scope_rule(name: str, value: Any) -> Any:
    """One membership filter through AssessmentScope's rules, in its canonical form."""
    try:
        return AssessmentScope.parse({name: value}).to_json()[name]
    except ScopeError as error:
        rule = str(error)
        raise ValueError(rule.removeprefix(f"{name}: ")) from None


class Membership(_Model):
    """Which machines: every given filter must match (:class:`AssessmentScope` rules), and, with a
    ``savedSearch``, the machine must also be among its results. ``{"all": true}`` says every machine."""

    all: bool = False
    subscription_ids: list[str] = Field(default_factory=list)
    resource_groups: list[str] = Field(default_factory=list)
    locations: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    tag_match: TagMatch = TagMatch.ALL
    os_type: OsType | None = None
    machine_ids: list[str] = Field(default_factory=list)
    saved_search: SavedSearch | None = None

    @field_validator("subscription_ids", "resource_groups", "locations", "tags", "machine_ids", mode="before")
    @classmethod
    def _scope_filters(cls, value: Any, info: ValidationInfo) -> Any:
        return _scope_rule(to_camel(info.field_name or ""), value)

    @field_validator("tag_match", mode="before")
    @classmethod
    def _tag_match(cls, value: Any) -> Any:
        return _scope_rule("tagMatch", value)

    @field_validator("os_type", mode="before")
    @classmethod
    def _os_type(cls, value: Any) -> Any:
        return None if value is None else _scope_rule("osType", value)

    @model_validator(mode="after")
    def _says_which(self) -> Membership:
        narrows = self.scope().narrows() or self.saved_search is not None
        if self.all and narrows:
            raise ValueError("all: true selects every machine; leave it out to narrow by the other fields")
        if not self.all and not narrows:
            raise ValueError(
                'name the machines (subscriptionIds, resourceGroups, locations, tags, osType, machineIds or '
                'savedSearch), or say {"all": true} for every machine'
            )
        return self

    @model_serializer(mode="wrap")
    def _given_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only the filters said: empty lists, ``all: false`` and the default ``tagMatch`` are left out."""
        body: dict[str, Any] = handler(self)
        tag_match = "tagMatch" if "tagMatch" in body else "tag_match"
        if not self.tags or self.tag_match is TagMatch.ALL:
            body.pop(tag_match, None)
        return {k: v for k, v in body.items() if v not in ([], {}, False, None)}

    @functools.cached_property
    def _scope(self) -> AssessmentScope:
        return self.scope()

    def scope(self) -> AssessmentScope:
        """The filters as an :class:`AssessmentScope` (the saved search is matched separately)."""
        body = {
            "subscriptionIds": self.subscription_ids, "resourceGroups": self.resource_groups,
            "locations": self.locations, "tags": self.tags, "tagMatch": self.tag_match.value,
            "machineIds": self.machine_ids,
        }  # fmt: skip
        if self.os_type is not None:
            body["osType"] = self.os_type.value
        return AssessmentScope.parse(body)

    def matches(self, machine: Machine, searched: Mapping[str, set[str]], key: str) -> bool:
        """Whether ``machine`` is a member; ``searched[key]`` holds the saved search's resource ids in
        lower case. A search missing there (never run, or failing) raises :class:`SearchUnavailable`
        when the machine passes the other filters: nobody can tell whether it is a member."""
        if not (self.all or self._scope.matches(machine)):
            return False
        if self.saved_search is None:
            return True
        members = searched.get(key)
        if members is None:
            raise SearchUnavailable(key)
        return machine.resource_id.lower() in members


class Ring(_Model):
    """A stage of the category's rollout. Every ring but the last says which machines of the category it
    takes (``membership``); the last takes the rest."""

    name: str = Field(json_schema_extra={"pattern": NAME_PATTERN.pattern})
    membership: Membership | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)

    @field_validator("membership")
    @classmethod
    def _narrows(cls, value: Membership | None) -> Membership | None:
        if value is not None and value.all:
            raise ValueError(
                "a ring narrows its category: name machines, not all (the last ring takes the rest)"
            )
        return value


class Owner(_Model):
    name: str = Field(min_length=1, max_length=MAX_LINE_CHARS)
    contact: str | None = Field(default=None, min_length=1, max_length=MAX_LINE_CHARS,
                                description="how to reach the owner: an e-mail address, a team channel")


class Deadlines(_Model):
    """Days after an update is first seen by which a machine of the category must have it."""

    critical: int = Field(default=DEFAULT_DEADLINES["critical"], ge=1, le=MAX_DEADLINE_DAYS)
    security: int = Field(default=DEFAULT_DEADLINES["security"], ge=1, le=MAX_DEADLINE_DAYS)
    other: int = Field(default=DEFAULT_DEADLINES["other"], ge=1, le=MAX_DEADLINE_DAYS)

    @field_validator("critical", "security", "other", mode="before")
    @classmethod
    def _whole_days(cls, value: Any) -> Any:
        return _whole_number(value, "a whole number of days")

    def days(self, group: DeadlineGroup) -> int:
        return int(getattr(self, group.value))


class EvidenceRule(_Model):
    """A patch passes the category's test ring when it installed on ``minMachines`` machines of the
    ring with no failure and ``bakeHours`` passed since the last of those installs."""

    min_machines: int = Field(default=DEFAULT_MIN_MACHINES, ge=1, le=MAX_MIN_MACHINES)
    bake_hours: int = Field(default=DEFAULT_BAKE_HOURS, ge=0, le=MAX_BAKE_HOURS)

    @field_validator("min_machines", "bake_hours", mode="before")
    @classmethod
    def _whole(cls, value: Any) -> Any:
        return _whole_number(value, "a whole number")


class AutoApprove(_Model):
    """Updates of these groups that ``passed`` and baked ``minBakeHours`` (counted as ``bakeHours`` is)
    are approved by the rule, recorded as approved by ``rule:<category>``."""

    classifications: list[DeadlineGroup] = Field(min_length=1, max_length=len(DeadlineGroup))
    min_bake_hours: int = Field(default=0, ge=0, le=MAX_BAKE_HOURS)

    @field_validator("min_bake_hours", mode="before")
    @classmethod
    def _whole(cls, value: Any) -> Any:
        return _whole_number(value, "a whole number")

    @field_validator("classifications")
    @classmethod
    def _unique(cls, value: list[DeadlineGroup]) -> list[DeadlineGroup]:
        return list(dict.fromkeys(value))

    def covers(self, group: DeadlineGroup) -> bool:
        return group in self.classifications


def _default_rings() -> list[Ring]:
    return [Ring(name=DEFAULT_RING)]


class AssetCategory(_Model):
    name: str = Field(json_schema_extra={"pattern": NAME_PATTERN.pattern})
    description: str = Field(default="", max_length=MAX_DESCRIPTION_CHARS)
    role: str = Field(default="", max_length=MAX_LINE_CHARS,
                      description="what the machines do, e.g. 'web front end'")
    criticality: int = Field(ge=MIN_CRITICALITY, le=MAX_CRITICALITY, description="1 = most critical")
    owner: Owner | None = None
    priority: int = Field(default=DEFAULT_PRIORITY, ge=0, le=MAX_ORDER,
                          description="membership precedence: a machine goes to the first matching "
                                      "category, lower priority first")
    patch_order: int = Field(default=DEFAULT_PATCH_ORDER, ge=0, le=MAX_ORDER,
                             description="the order categories are patched in, lower first")
    membership: Membership
    rings: list[Ring] = Field(default_factory=_default_rings, min_length=1, max_length=MAX_RINGS)
    deadlines: Deadlines = Field(default_factory=Deadlines)
    requires_approval: bool = True
    test_evidence: EvidenceRule = Field(default_factory=EvidenceRule)
    auto_approve: AutoApprove | None = None
    # Health checks, bake times, snapshots and rollback for the category's machines in every deployment
    # that has no policy of its own (shared.safety.policy); ringBakeHours waits between its rings.
    safety: SafetyPolicy | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value.lower() == UNCATEGORISED:
            raise ValueError(f"{UNCATEGORISED!r} is reserved for machines no category takes")
        return _check_name(value)

    @field_validator("criticality", "priority", "patch_order", mode="before")
    @classmethod
    def _whole(cls, value: Any) -> Any:
        return _whole_number(value, "a whole number")

    @field_validator("rings")
    @classmethod
    def _rings(cls, value: list[Ring]) -> list[Ring]:
        seen: set[str] = set()
        for index, ring in enumerate(value):
            if ring.name.lower() in seen:
                raise ValueError(f"ring {ring.name!r} is named twice (ring names are unique ignoring case)")
            seen.add(ring.name.lower())
            last = index == len(value) - 1
            if last and ring.membership is not None:
                raise ValueError(
                    f"the last ring ({ring.name!r}) takes every machine of the category no earlier ring "
                    "took: leave its membership out"
                )
            if not last and ring.membership is None:
                raise ValueError(
                    f"ring {ring.name!r} needs a membership: every ring but the last names its machines"
                )
        return value

    @field_validator("auto_approve")
    @classmethod
    def _auto_needs_approval(cls, value: AutoApprove | None, info: ValidationInfo) -> AutoApprove | None:
        if value is not None and info.data.get("requires_approval") is False:
            raise ValueError("an automatic approval rule applies only where requiresApproval is true")
        return value

    @property
    def test_ring(self) -> str:
        """The first ring, where a patch is tested before the others get it."""
        return self.rings[0].name

    def ring(self, name: str) -> Ring | None:
        return next((r for r in self.rings if r.name.lower() == name.lower()), None)

    def to_json(self) -> dict[str, Any]:
        """The camelCase JSON form :func:`validate_category` reads back."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _check_name(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise ValueError(NAME_RULE)
    return value


def _whole_number(value: Any, what: str) -> Any:
    """Refuse booleans and fractions that pydantic's lax mode would take as integers."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"must be {what}")
    return value


def validate_category(body: Any) -> AssetCategory:
    """The category in ``body`` (parsed JSON), or one :class:`CategoryError` listing every bad field."""
    if not isinstance(body, dict):
        raise CategoryError("body", "must be a JSON object")
    try:
        category = AssetCategory.model_validate(body)
    except ValidationError as error:
        details = field_errors(error)
        raise CategoryError(*details[0], details=details) from None
    return category


def stored_category(text: str) -> AssetCategory:
    """A category as stored (its JSON text)."""
    return AssetCategory.model_validate(json.loads(text))


def category_json_schema() -> dict[str, Any]:
    """The JSON Schema of a category body, for the OpenAPI document; membership filters show the
    scope's own schema (the rules the parser applies)."""
    schema = AssetCategory.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    scope = scope_json_schema()["properties"]
    membership = schema.get("$defs", {}).get("Membership")
    if membership is not None:
        for name in _SCOPE_FIELDS:
            if name in membership["properties"]:
                membership["properties"][name] = scope[name]
    return schema


# --- placement ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a machine stands: its category (or :data:`UNCATEGORISED`) and ring (None when uncategorised)."""

    category: str
    ring: str | None

    def to_json(self) -> dict[str, str | None]:
        return {"category": self.category, "ring": self.ring}


UNPLACED = Placement(UNCATEGORISED, None)


def membership_key(category: str, ring: str | None = None) -> str:
    """The key of a saved search's members: the category's name, or ``<category>|<ring>`` for a ring's
    (names hold no '|'; a Table key may hold it), in lower case."""
    return (category if ring is None else f"{category}|{ring}").lower()


def saved_searches(categories: Iterable[AssetCategory]) -> dict[str, str]:
    """Every saved search the categories use, by :func:`membership_key`: what a caller runs once per
    pass and gives :func:`categorise` as ``saved_search_members``."""
    found: dict[str, str] = {}
    for category in categories:
        if category.membership.saved_search is not None:
            found[membership_key(category.name)] = category.membership.saved_search.query
        for ring in category.rings:
            if ring.membership is not None and ring.membership.saved_search is not None:
                found[membership_key(category.name, ring.name)] = ring.membership.saved_search.query
    return found


def by_priority(categories: Iterable[AssetCategory]) -> list[AssetCategory]:
    """Categories in the order membership is decided: priority, then name ignoring case."""
    return sorted(categories, key=lambda c: (c.priority, c.name.lower()))


def categorise(
    machine: Machine,
    categories: Sequence[AssetCategory],
    saved_search_members: Mapping[str, set[str]],
) -> Placement:
    """The first category (by :func:`by_priority`) whose membership ``machine`` matches, and the first of
    its rings whose membership it matches (the last ring when none does); :data:`UNPLACED` when no
    category takes it. ``saved_search_members`` maps :func:`membership_key` to the lower-cased resource
    ids a saved search returned; :class:`SearchUnavailable` when a search the decision needs is missing."""
    for category in by_priority(categories):
        if category.membership.matches(machine, saved_search_members, membership_key(category.name)):
            return Placement(category.name, _ring(machine, category, saved_search_members))
    return UNPLACED


def _ring(machine: Machine, category: AssetCategory, searched: Mapping[str, set[str]]) -> str:
    for ring in category.rings[:-1]:
        assert ring.membership is not None  # every ring but the last has one (AssetCategory._rings)
        if ring.membership.matches(machine, searched, membership_key(category.name, ring.name)):
            return ring.name
    return category.rings[-1].name


def deadline_days(category: AssetCategory | None, os_type: OsType, classification_display: str) -> int:
    """Days a machine of ``category`` has to install an update of this classification (any spelling
    Azure uses); an uncategorised machine (``None``) has the default deadlines."""
    deadlines = category.deadlines if category is not None else Deadlines()
    return deadlines.days(classification_group(os_type, classification_display))
