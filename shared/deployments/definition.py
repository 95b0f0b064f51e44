"""An update deployment's definition: which machines, which updates, when, for how long, how fast.

The HTTP body is parsed into :class:`DeploymentDefinition` at the edge; every rule lives here so
that the API, the scheduler and the ad-hoc runner agree on what a valid deployment is.
:func:`validate_definition` reports the first broken rule as one :class:`DefinitionError`
naming the JSON field (a dotted camelCase path such as ``schedule.timeZone``).
"""

from __future__ import annotations

import math
import re
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

from shared.deployments.schedule import Schedule
from shared.fleet.scope import AssessmentScope, ScopeError
from shared.model.classification import UnknownClassification, linux_combination_error, to_api
from shared.model.kb import parse_kb
from shared.model.machines import OsType, parse_resource_id

# Legacy Update Management: at most 1,000 machines per deployment (AZURE-FACTS, limits).
MAX_MACHINES = 1000
# Legacy Update Management accepts a maintenance window of 30 minutes to 6 hours (the seed).
MIN_WINDOW_MINUTES = 30
MAX_WINDOW_MINUTES = 360
# Letters, digits, '-', '_' and '.', starting with a letter or digit; 64 characters keeps the
# name usable inside Durable instance ids and Table keys (which refuse '/', '\\', '#', '?').
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Package masks: what package names and versions are made of plus the '*' and '?' wildcards,
# the characters the install API and the ARM stand-in (local/arm/simulation.py) match. An include
# mask may pin a version as "name=version" (Azure/LinuxPatchExtension PackageFilter splits on '=').
PACKAGE_MASK_PATTERN = re.compile(r"^[A-Za-z0-9._+:~*?-]{1,256}$")
MAX_PACKAGE_MASK_CHARS = 256
PERCENT_PATTERN = re.compile(r"^(\d{1,3})%$")
# A saved search's KQL is sent in the query API's JSON body; 10,000 characters is plenty for a
# machine list and keeps the stored definition small.
MAX_QUERY_CHARS = 10_000
# Defaults: half the targets at once, as AWS SSM's MaxConcurrency default (AZURE-FACTS); no error
# budget by default ("100%"), which is legacy Update Management's behaviour (it never stops a rollout).
DEFAULT_MAX_CONCURRENT = "50%"
DEFAULT_ERROR_BUDGET = "100%"

RebootSetting = Literal["IfRequired", "Never", "Always", "RebootOnly"]
EvaluateGroupsAt = Literal["create", "run"]


class DefinitionError(ValueError):
    """An invalid definition; :attr:`field` is the dotted camelCase path of the field at fault."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class SavedSearch(_Model):
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)


class TargetGroup(_Model):
    """Exactly one of: a saved log search returning a ``ResourceId`` column, or a dynamic filter.

    The filter is an :class:`AssessmentScope` without ``osType`` (the deployment's
    ``operatingSystem`` decides) and without ``machineIds`` (those go in ``targets.machines``).
    """

    saved_search: SavedSearch | None = None
    filter: dict[str, Any] | None = None

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


class Targets(_Model):
    machines: list[str] = Field(default_factory=list)
    groups: list[TargetGroup] = Field(default_factory=list)
    # "create" freezes group membership when the deployment is created (legacy behaviour);
    # "run" re-evaluates the groups at each run, the fix for the seed's documented limitation.
    evaluate_groups_at: EvaluateGroupsAt = "create"

    @field_validator("machines")
    @classmethod
    def _resource_ids(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_MACHINES:
            raise ValueError(f"at most {MAX_MACHINES} machines per deployment (the Update Management limit)")
        for resource_id in value:
            parse_resource_id(resource_id)  # its ValueError names the expected forms
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _not_empty(self) -> Targets:
        if not self.machines and not self.groups:
            raise ValueError("name at least one machine or one group")
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


def _resolve(value: int | str, total: int) -> int:
    if isinstance(value, int):
        return value
    return math.ceil(total * int(value.rstrip("%")) / 100)


class Rollout(_Model):
    max_concurrent: int | str = DEFAULT_MAX_CONCURRENT
    # Failed machines after which no new machine starts: with 2, the second failure stops the rollout.
    error_budget: int | str = DEFAULT_ERROR_BUDGET

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
    name: str
    operating_system: OsType
    targets: Targets
    classifications: list[str] = Field(min_length=1)
    kb_numbers_to_include: list[str] = Field(default_factory=list)
    kb_numbers_to_exclude: list[str] = Field(default_factory=list)
    packages_to_include: list[str] = Field(default_factory=list)
    packages_to_exclude: list[str] = Field(default_factory=list)
    schedule: Schedule
    maintenance_window_minutes: int
    reboot_setting: RebootSetting = "IfRequired"
    rollout: Rollout = Field(default_factory=Rollout)

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
        for mask in value:
            _check_package_mask(mask, exclude=info.field_name == "packages_to_exclude")
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


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``('targets', 'groups', 0, 'filter')`` -> ``targets.groups.0.filter``; empty means the body."""
    return ".".join(str(part) for part in loc) or "body"


def _message(error: Any) -> str:
    if error["type"] == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    if error["type"] == "extra_forbidden":
        return "unknown field"
    return str(error["msg"])


def validate_definition(body: Any) -> DeploymentDefinition:
    """The definition in ``body`` (parsed JSON), or :class:`DefinitionError` for the first bad field."""
    if not isinstance(body, dict):
        raise DefinitionError("body", "must be a JSON object")
    try:
        return DeploymentDefinition.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        raise DefinitionError(_field_path(first["loc"]), _message(first)) from None
