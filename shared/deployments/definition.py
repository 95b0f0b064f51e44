"""An update deployment's definition: which machines, which updates, when, for how long, how fast.

The HTTP body is parsed into :class:`DeploymentDefinition` at the edge; every rule lives here so
that the API, the scheduler and the ad-hoc runner agree on what a valid deployment is.
:func:`validate_definition` reports every broken rule at once in one :class:`DefinitionError`,
each naming the JSON field (a dotted camelCase path such as ``schedule.timeZone``).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

from shared.deployments.schedule import Schedule, next_occurrence, skipped_months, to_utc
from shared.fleet.scope import AssessmentScope, ScopeError, scope_json_schema
from shared.model.classification import (
    UnknownClassification,
    accepted_names,
    linux_combination_error,
    to_api,
)
from shared.model.kb import KB_SCHEMA_PATTERN, parse_kb
from shared.model.machines import RESOURCE_ID_SCHEMA_PATTERN, OsType, parse_resource_id
from shared.model.validation import NAME_PATTERN, NAME_RULE, SavedSearch, field_errors
from shared.safety.policy import SafetyPolicy

# Legacy Update Management allowed 1,000 machines per deployment and Azure Update Manager 3,000 per
# schedule (AZURE-FACTS, limits); this service takes a fleet of 10,000 in one deployment (issue 12). The
# target lists live in rows of their own when they pass what an entity holds (definitions_table,
# runs_table), and only batches of DEPLOYMENT_BATCH_SIZE ids cross Durable boundaries.
MAX_MACHINES = 10_000
# Legacy Update Management accepts a maintenance window of 30 minutes to 6 hours (the seed).
MIN_WINDOW_MINUTES = 30
MAX_WINDOW_MINUTES = 360
# Package masks: what package names and versions are made of plus the '*' and '?' wildcards,
# the characters the install API and the ARM stand-in (local/arm/simulation.py) match. An include
# mask may pin a version as "name=version" (Azure/LinuxPatchExtension PackageFilter splits on '=').
PACKAGE_MASK_PATTERN = re.compile(r"^[A-Za-z0-9._+:~*?-]{1,256}$")
MAX_PACKAGE_MASK_CHARS = 256
# Lists a person writes by hand: 1,000 (as machines per deployment) is far past any real mask or KB list,
# and bounds what a definition costs to check and to store.
MAX_PACKAGE_MASKS = 1000
MAX_KB_NUMBERS = 1000
# Each group is one Log Analytics query or one filter over the inventory when it is evaluated.
MAX_GROUPS = 100
# A definition is stored as JSON, in its Table entity up to 200,000 characters and past that in rows of
# its own (shared.azure.tables.store_text). The cap bounds what one costs to check, store and read:
# MAX_MACHINES resource ids of about 150 characters (270 at the longest names) and room for the rest.
MAX_DEFINITION_CHARS = 3_000_000
PERCENT_PATTERN = re.compile(r"^(\d{1,3})%$")
# Defaults: half the targets at once, as AWS SSM's MaxConcurrency default (AZURE-FACTS); no error
# budget by default ("100%"), which is legacy Update Management's behaviour (it never stops a rollout).
DEFAULT_MAX_CONCURRENT = "50%"
DEFAULT_ERROR_BUDGET = "100%"

RebootSetting = Literal["IfRequired", "Never", "Always", "RebootOnly"]
EvaluateGroupsAt = Literal["create", "run"]


class DefinitionError(ValueError):
    """An invalid definition; :attr:`field` is the dotted camelCase path of the (first) field at fault,
    :attr:`details` each field at fault with its rule, in the order of the body."""

    def __init__(self, field_name: str, message: str,
                 details: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message
        self.details: tuple[tuple[str, str], ...] = tuple(details) or ((field_name, message),)


class DefinitionTooLarge(DefinitionError):
    """A definition too big to store (see MAX_DEFINITION_CHARS); the API answers 413."""

    too_large = True


# The OpenAPI document shows these rules through each field's json_schema_extra (JSON Schema has no
# Python regex flags or named groups, hence the schema forms of some patterns).
_MASK = PACKAGE_MASK_PATTERN.pattern.strip("^$")
_BY_OS = "names of the deployment's operatingSystem: its API names, display names or (Linux) portal choices"


def _items_matching(pattern: str) -> dict[str, Any]:
    return {"items": {"type": "string", "pattern": pattern}}


def _count_or_percent_schema(low: int) -> dict[str, Any]:
    """The schema of :func:`_count_or_percent`'s values."""
    return {"anyOf": [{"type": "integer", "minimum": low},
                      {"type": "string", "pattern": PERCENT_PATTERN.pattern,
                       "description": f"a percentage of the targets, {low}% to 100%"}]}


def _group_filter_schema() -> dict[str, Any]:
    schema = scope_json_schema()
    owned_elsewhere = ("osType", "machineIds")  # see TargetGroup
    schema["properties"] = {k: v for k, v in schema["properties"].items() if k not in owned_elsewhere}
    return schema


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class TargetGroup(_Model):
    """Exactly one of: a saved log search returning a ``ResourceId`` column, or a dynamic filter.

    The filter is an :class:`AssessmentScope` without ``osType`` (the deployment's
    ``operatingSystem`` decides) and without ``machineIds`` (those go in ``targets.machines``).
    """

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": [name], "properties": {name: {"type": "object"}}} for name in ("savedSearch", "filter")
    ]})

    saved_search: SavedSearch | None = None
    filter: dict[str, Any] | None = Field(
        None, json_schema_extra={"anyOf": [_group_filter_schema(), {"type": "null"}]}
    )

    @field_validator("filter")
    @classmethod
    def _scope(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        for owned_elsewhere in ("osType", "machineIds"):
            if owned_elsewhere in value:
                raise ValueError(
                    f"{owned_elsewhere} is not allowed in a group filter "
                    "(use operatingSystem and targets.machines)"
                )
        try:
            scope = AssessmentScope.parse(value)
        except ScopeError as error:
            raise ValueError(str(error)) from None
        body = scope.to_json()
        body.pop("machineIds", None)
        return body

    @model_validator(mode="after")
    def _exactly_one(self) -> TargetGroup:
        if (self.saved_search is None) == (self.filter is None):
            raise ValueError("a group is either {\"savedSearch\": {...}} or {\"filter\": {...}}, exactly one")
        return self

    def scope(self) -> AssessmentScope:
        assert self.filter is not None
        return AssessmentScope.parse(self.filter)


class CategoryTarget(_Model):
    """The machines placed in an asset category (and, when given, one of its rings), as the Machines
    entity's ``AssetCategory`` and ``Ring`` columns hold them (shared.governance.categories), at each run."""

    category: str = Field(json_schema_extra={"pattern": NAME_PATTERN.pattern})
    ring: str | None = Field(None, json_schema_extra={"pattern": NAME_PATTERN.pattern})

    @field_validator("category", "ring")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        if value is not None and not NAME_PATTERN.match(value):
            raise ValueError(NAME_RULE)
        return value


class Targets(_Model):
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": [name], "properties": {name: {"minItems": 1}}}
        for name in ("machines", "groups", "categories")
    ], "description": "at least one machine, one group or one category"})

    machines: list[str] = Field(default_factory=list, json_schema_extra={
        "items": {"type": "string", "pattern": RESOURCE_ID_SCHEMA_PATTERN}, "maxItems": MAX_MACHINES})
    groups: list[TargetGroup] = Field(default_factory=list, max_length=MAX_GROUPS)
    # "create" freezes group membership when the deployment is created (legacy behaviour);
    # "run" re-evaluates the groups at each run, the fix for the seed's documented limitation.
    evaluate_groups_at: EvaluateGroupsAt = "create"
    # Asset categories (and rings) whose machines the deployment takes, read when each run starts.
    categories: list[CategoryTarget] | None = Field(None, max_length=MAX_GROUPS)

    @field_validator("machines")
    @classmethod
    def _resource_ids(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_MACHINES:
            raise ValueError(f"at most {MAX_MACHINES:,} machines per deployment")
        for resource_id in value:
            parse_resource_id(resource_id)  # its ValueError names the expected forms
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _not_empty(self) -> Targets:
        if not self.machines and not self.groups and not self.categories:
            raise ValueError("name at least one machine, one group or one category")
        return self


def _count_or_percent(value: Any, low: int, rule: str) -> int | str:
    """A machine count (``>= low``) or a percentage ``"N%"`` of the targets (``low``-100)."""
    if isinstance(value, bool):
        raise ValueError(rule)
    if isinstance(value, int):
        if value < low:
            raise ValueError(rule)
        return value
    if isinstance(value, str):
        match = PERCENT_PATTERN.match(value.strip())
        if match and low <= int(match[1]) <= 100:
            return f"{int(match[1])}%"
    raise ValueError(rule)


def _check_package_mask(mask: str, exclude: bool) -> None:
    """A Linux package mask as Azure's agent reads it: ``name`` or, in an include mask only,
    ``name=version``, each part with the ``*``/``?`` wildcards (Azure/LinuxPatchExtension PackageFilter)."""
    name, equals, version = mask.partition("=")
    if equals and exclude:
        raise ValueError(
            f"{mask!r} names a version, and an exclude mask cannot: Azure's Linux patch agent ignores the "
            f"version of an exclusion and excludes every version of {name!r}. Exclude {name!r} (every "
            f"version), or name the versions to install in packagesToInclude as '{name}=<version>'"
        )
    if len(mask) > MAX_PACKAGE_MASK_CHARS or not PACKAGE_MASK_PATTERN.match(name) or (
        equals and not PACKAGE_MASK_PATTERN.match(version)
    ):
        raise ValueError(
            f"{mask!r} is not a package mask: a name, or name=version, of letters, digits, . _ - + : ~ and "
            "the wildcards * ?"
        )


def matches_every_name(mask: str) -> bool:
    """Whether a mask matches every package name: wildcards only (``*``, ``**``, ``?*``, ``*?*``: any
    non-empty name), or ``*.*``, which matches every name that carries an architecture suffix
    (``bash.x86_64``), as every yum and zypper package does and the agent matches (PackageFilter)."""
    if "*" not in mask:
        return False
    rest = mask.replace("*", "")
    return rest in ("", "?") or (rest == "." and mask.startswith("*") and mask.endswith("*"))


def _resolve(value: int | str, total: int) -> int:
    if isinstance(value, int):
        return value
    return math.ceil(total * int(value.rstrip("%")) / 100)


class Rollout(_Model):
    max_concurrent: int | str = Field(
        default=DEFAULT_MAX_CONCURRENT, json_schema_extra=_count_or_percent_schema(1)
    )
    # Failed machines after which no new machine starts: with 2, the second failure stops the rollout.
    error_budget: int | str = Field(
        default=DEFAULT_ERROR_BUDGET, json_schema_extra=_count_or_percent_schema(0)
    )

    @field_validator("max_concurrent", mode="before")
    @classmethod
    def _max_concurrent(cls, value: Any) -> int | str:
        return _count_or_percent(value, 1, 'must be a number >= 1 or a percentage "1%" to "100%"')

    @field_validator("error_budget", mode="before")
    @classmethod
    def _error_budget(cls, value: Any) -> int | str:
        return _count_or_percent(value, 0, 'must be a number >= 0 or a percentage "0%" to "100%"')

    def concurrency(self, total: int) -> int:
        """Machines allowed at once for ``total`` targets (at least one)."""
        return max(1, _resolve(self.max_concurrent, total))

    def failures_allowed(self, total: int) -> int:
        """Failed machines at which the rollout stops starting machines (at least one)."""
        return max(1, _resolve(self.error_budget, total))


class DeploymentDefinition(_Model):
    name: str = Field(json_schema_extra={"pattern": NAME_PATTERN.pattern})
    operating_system: OsType
    targets: Targets
    # Required unless the deployment names a release or says approvedOnly (then it installs those by name).
    classifications: list[str] = Field(default_factory=list, json_schema_extra={"items": {
        "enum": list(dict.fromkeys(name for os_type in OsType for name in accepted_names(os_type))),
        "description": _BY_OS}})
    kb_numbers_to_include: list[str] = Field(default_factory=list, max_length=MAX_KB_NUMBERS,
                                             json_schema_extra=_items_matching(KB_SCHEMA_PATTERN))
    kb_numbers_to_exclude: list[str] = Field(default_factory=list, max_length=MAX_KB_NUMBERS,
                                             json_schema_extra=_items_matching(KB_SCHEMA_PATTERN))
    packages_to_include: list[str] = Field(default_factory=list, max_length=MAX_PACKAGE_MASKS,
                                           json_schema_extra=_items_matching(f"^{_MASK}(={_MASK})?$"))
    packages_to_exclude: list[str] = Field(default_factory=list, max_length=MAX_PACKAGE_MASKS,
                                           json_schema_extra=_items_matching(PACKAGE_MASK_PATTERN.pattern))
    schedule: Schedule
    maintenance_window_minutes: int = Field(
        json_schema_extra={"minimum": MIN_WINDOW_MINUTES, "maximum": MAX_WINDOW_MINUTES})
    reboot_setting: RebootSetting = "IfRequired"
    rollout: Rollout = Field(default_factory=Rollout)
    # A release (shared.governance.releases): install exactly its items for the operatingSystem.
    release: str | None = Field(None, json_schema_extra={"pattern": NAME_PATTERN.pattern})
    # Install only the updates approved for each machine's asset category (shared.governance.enforcement).
    approved_only: bool | None = None
    # Health checks, bake time, snapshots and rollback for every machine of the deployment's runs, in place
    # of their categories' policies (shared.safety.policy).
    safety: SafetyPolicy | None = None

    @field_validator("safety")
    @classmethod
    def _safety(cls, value: SafetyPolicy | None) -> SafetyPolicy | None:
        if value is not None and value.ring_bake_hours:
            raise ValueError("ringBakeHours: only a category's policy has rings to wait between; set it on "
                             "the category")
        return value

    @field_validator("release")
    @classmethod
    def _release(cls, value: str | None) -> str | None:
        if value is not None and not NAME_PATTERN.match(value):
            raise ValueError(NAME_RULE)
        return value

    @model_validator(mode="after")
    def _what_to_install(self) -> DeploymentDefinition:
        """Classifications choose what to install, unless a release or approvedOnly names it: then the
        request lists exactly those updates, and classifications or include lists would add others."""
        named_by = "release" if self.release else "approvedOnly" if self.approved_only else None
        problems: list[tuple[str, str]] = []
        if named_by is None and not self.classifications:
            problems.append(("classifications", "name at least 1 (or a release, or approvedOnly: true)"))
        if self.release and self.approved_only:
            problems.append(("approvedOnly", "not allowed with a release, which installs its own items"))
        for name, value in (("classifications", self.classifications),
                            ("kbNumbersToInclude", self.kb_numbers_to_include),
                            ("packagesToInclude", self.packages_to_include)):
            if named_by is not None and value:
                problems.append((name, f"not allowed with {named_by}, which installs exactly the updates "
                                       "it names"))
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, [
                InitErrorDetails(type=PydanticCustomError("value_error", message), loc=(name,), input=None)
                for name, message in problems
            ])  # fmt: skip
        return self
        if self.release and self.approved_only:
            raise ValueError("release and approvedOnly exclude each other: a release installs its own items")
        given = [name for name, value in (("classifications", self.classifications),
                                          ("kbNumbersToInclude", self.kb_numbers_to_include),
                                          ("packagesToInclude", self.packages_to_include)) if value]
        if given:
            raise ValueError(f"{', '.join(given)}: not allowed with {named_by}, which installs exactly "
                             "the updates it names")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                "must be 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
            )
        return value

    @field_validator("classifications")
    @classmethod
    def _classifications(cls, value: list[str], info: ValidationInfo) -> list[str]:
        os_type = info.data.get("operating_system")
        if os_type is None:  # operatingSystem itself is invalid and reported
            return value
        try:
            chosen = list(to_api(os_type, value))
        except UnknownClassification as error:
            raise ValueError(str(error)) from None
        refused = linux_combination_error(chosen) if os_type is OsType.LINUX else None
        if refused:
            raise ValueError(refused)
        return chosen

    @field_validator("kb_numbers_to_include", "kb_numbers_to_exclude")
    @classmethod
    def _kb_numbers(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if value and info.data.get("operating_system") is OsType.LINUX:
            raise ValueError("KB numbers apply to Windows only; use packagesToInclude/packagesToExclude")
        return list(dict.fromkeys(parse_kb(kb) for kb in value))

    @field_validator("packages_to_include", "packages_to_exclude")
    @classmethod
    def _package_masks(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if value and info.data.get("operating_system") is OsType.WINDOWS:
            raise ValueError("package masks apply to Linux only; use kbNumbersToInclude/kbNumbersToExclude")
        exclude = info.field_name == "packages_to_exclude"
        for mask in value:
            _check_package_mask(mask, exclude=exclude)
            if exclude and matches_every_name(mask):
                raise ValueError(
                    f"{mask!r} excludes every package, so the deployment could never install anything; "
                    "name the packages to keep back instead"
                )
        return value

    @field_validator("maintenance_window_minutes", mode="before")
    @classmethod
    def _window(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not (
            MIN_WINDOW_MINUTES <= value <= MAX_WINDOW_MINUTES
        ):
            raise ValueError(
                f"must be {MIN_WINDOW_MINUTES} to {MAX_WINDOW_MINUTES} minutes "
                "(the maintenance window Update Management allows)"
            )
        return value

    def to_json(self) -> dict[str, Any]:
        """The camelCase JSON form that :func:`validate_definition` reads back."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def validate_definition(body: Any) -> DeploymentDefinition:
    """The definition in ``body`` (parsed JSON), or one :class:`DefinitionError` listing every bad field."""
    if not isinstance(body, dict):
        raise DefinitionError("body", "must be a JSON object")
    try:
        definition = DeploymentDefinition.model_validate(body)
    except ValidationError as error:
        details = field_errors(error)
        raise DefinitionError(*details[0], details=details) from None
    stored = len(json.dumps(definition.to_json(), separators=(",", ":")))
    if stored > MAX_DEFINITION_CHARS:
        raise DefinitionTooLarge(
            "body", f"the definition is {stored:,} characters as stored; at most "
            f"{MAX_DEFINITION_CHARS:,} are accepted",
        )
    return definition


def validate_inline_definition(body: Any, now: datetime) -> DeploymentDefinition:
    """A definition to run now (``POST /api/deployment-runs``): as :func:`validate_definition`, but the
    ``schedule`` may be left out, since the run starts at once; then it is recorded as a one-time
    schedule at ``now`` in UTC."""
    if isinstance(body, dict) and "schedule" not in body:
        wall = now.astimezone(UTC).replace(tzinfo=None, microsecond=0)
        body = {**body, "schedule": {"startTime": wall.isoformat(), "timeZone": "UTC"}}
    return validate_definition(body)


@functools.lru_cache(maxsize=16)
def stored_definition(text: str) -> DeploymentDefinition:
    """A definition as stored (its JSON text), parsed once per process and text: the stores read a
    run's definition on every claim, step and finish, and one of 10,000 machines is megabytes to check."""
    return DeploymentDefinition.model_validate(json.loads(text))


@functools.lru_cache(maxsize=16)
def stored_members(text: str) -> tuple[str, ...]:
    """Frozen group members as stored (a JSON array of resource ids), parsed once per process and text."""
    return tuple(json.loads(text))


def admit(definition: DeploymentDefinition, now: datetime, managed_subscriptions: Iterable[str]) -> list[str]:
    """The rules that need the clock and the app's settings, checked when a definition is created or
    edited: :class:`DefinitionError` (listing every field at fault) for one that can never work, else
    its warnings (may be empty)."""
    managed = {s.lower() for s in managed_subscriptions}
    problems: list[tuple[str, str]] = []
    for index, resource_id in enumerate(definition.targets.machines):
        subscription = parse_resource_id(resource_id).subscription_id.lower()
        if subscription not in managed:
            problems.append((f"targets.machines.{index}", f"{subscription} not in TARGET_SUBSCRIPTION_IDS"))
    for index, group in enumerate(definition.targets.groups):
        if group.filter is not None:
            outside = sorted({s.lower() for s in group.filter.get("subscriptionIds", [])} - managed)
            if outside:
                problems.append((f"targets.groups.{index}.filter.subscriptionIds",
                                 f"{', '.join(outside)} not in TARGET_SUBSCRIPTION_IDS"))
    problems.extend(_schedule_problems(definition.schedule, now))
    if problems:
        raise DefinitionError(*problems[0], details=problems)
    return skipped_months(definition.schedule)


def _schedule_problems(schedule: Schedule, now: datetime) -> list[tuple[str, str]]:
    try:
        start = to_utc(schedule.start_time, schedule.zone)
        expiry = None if schedule.expiry_time is None else to_utc(schedule.expiry_time, schedule.zone)
        upcoming = next_occurrence(schedule, now)
    except OverflowError:  # a wall time late in year 9999 has no UTC instant in zones behind UTC
        return [("schedule", "a time is out of range (past the year 9999 in UTC)")]
    if schedule.recurrence is None:
        if start <= now:
            return [("schedule.startTime", "is in the past: a one-time schedule must start later")]
    elif upcoming is None:
        if expiry is not None and expiry <= now:
            return [("schedule.expiryTime", "is in the past: the schedule has no run left")]
        return [("schedule.recurrence", "produces no run (no month of the series has the day)")]
    return []
