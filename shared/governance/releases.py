"""A release: a named, immutable set of exact versions (Windows KBs, Linux packages at a version) that
passed testing for one asset category, the category's baseline.

A deployment that names a release installs exactly its items for the deployment's OS
(:func:`install_lists`): Windows ``kbNumbersToInclude``, Linux include masks ``name=version``, which
Azure's Linux patch agent matches against the version a machine is offered (AZURE-FACTS "Install
parameters"; Azure/LinuxPatchExtension ``PackageFilter.check_for_explicit_inclusion`` compares the
version part with the version available). A machine offered a release's package only at another version
gets nothing of it and reports it held (:func:`held_packages`).

Pure: the HTTP body's model, the rules, and the builders of the items (from what passed, from what a
ring installed); the Table store is :mod:`shared.governance.releases_table`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from shared.governance.patch_refs import PatchRef, PatchRefError, parse_patch_ref
from shared.model.machines import OsType
from shared.model.validation import NAME_PATTERN, NAME_RULE, field_errors

# A release is a category's baseline for one patch cycle: a few hundred updates at most. 1,000 matches
# the deployment definition's caps on KB numbers and package masks (MAX_KB_NUMBERS, MAX_PACKAGE_MASKS),
# which a release's items become.
MAX_RELEASE_ITEMS = 1000
MAX_DESCRIPTION_CHARS = 1000

ReleaseSource = Literal["items", "passed", "ring"]
HELD_REASON = "held: version not tested"


class ReleaseError(ValueError):
    """An invalid release request; :attr:`field` is the camelCase path of the first field at fault,
    :attr:`details` every field at fault with its rule (as ``DefinitionError``)."""

    def __init__(self, field_name: str, message: str, details: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message
        self.details: tuple[tuple[str, str], ...] = tuple(details) or ((field_name, message),)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class ReleaseItemBody(_Model):
    os_type: OsType
    key: str = Field(min_length=1, max_length=300)

    @model_validator(mode="after")
    def _ref(self) -> ReleaseItemBody:
        try:
            parse_patch_ref(self.os_type, self.key)
        except PatchRefError as error:
            raise ValueError(error.message) from None
        return self


class ReleaseRequest(_Model):
    """``POST /api/releases``: explicit ``items``, or ``from: "passed"`` (every update passed for the
    category), or ``from: "ring"`` with ``ring`` and optionally ``at`` (the versions installed on the
    ring's machines at that time; now when left out)."""

    name: str = Field(json_schema_extra={"pattern": NAME_PATTERN.pattern})
    category: str = Field(min_length=1, max_length=64)
    description: str = Field("", max_length=MAX_DESCRIPTION_CHARS)
    from_: Literal["passed", "ring"] | None = Field(None, alias="from")
    ring: str | None = Field(None, min_length=1, max_length=64)
    at: datetime | None = None
    items: list[ReleaseItemBody] = Field(default_factory=list, max_length=MAX_RELEASE_ITEMS)

    @field_validator("name", "category", "ring")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not NAME_PATTERN.match(value):
            raise ValueError(NAME_RULE)
        return value

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must carry a time zone (for example 2026-12-01T12:00:00Z)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ReleaseRequest:
        if self.from_ is None and not self.items:
            raise ValueError('give the release\'s items, or "from": "passed" or "from": "ring"')
        if self.from_ is not None and self.items:
            raise ValueError(f'items and "from": {self.from_!r} exclude each other: a release is built '
                             "one way")
        if self.from_ == "ring" and not self.ring:
            raise ValueError('"from": "ring" needs the ring whose installed versions to freeze')
        if self.from_ != "ring" and (self.ring or self.at):
            raise ValueError('ring and at apply to "from": "ring" only')
        return self

    @property
    def source(self) -> ReleaseSource:
        return self.from_ or "items"

    def refs(self) -> tuple[PatchRef, ...]:
        """The explicit items as references (checked by :func:`parse_release_request`)."""
        return tuple(parse_patch_ref(item.os_type, item.key) for item in self.items)


def parse_release_request(body: Any) -> ReleaseRequest:
    """The request in ``body`` (parsed JSON), or one :class:`ReleaseError` listing every bad field."""
    if not isinstance(body, dict):
        raise ReleaseError("body", "must be a JSON object")
    try:
        request = ReleaseRequest.model_validate(body)
    except ValidationError as error:
        details = field_errors(error)
        raise ReleaseError(*details[0], details=details) from None
    problems = check_items(request.refs()) if request.items else []
    if problems:
        raise ReleaseError(*problems[0], details=problems)
    return request


@dataclass(frozen=True)
class Release:
    """A release as stored: immutable once created (no edit; deleted only when no deployment names it)."""

    name: str
    category: str
    description: str
    items: tuple[PatchRef, ...]
    created_by: str
    created_at: datetime
    source: ReleaseSource
    frozen_at: datetime | None = None  # "ring": the time whose installed versions were frozen
    ring: str | None = None

    def __post_init__(self) -> None:
        problems = check_items(self.items)
        if problems:
            raise ReleaseError(*problems[0], details=problems)

    def items_for(self, os_type: OsType) -> tuple[PatchRef, ...]:
        return tuple(ref for ref in self.items if ref.os_type is os_type)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "category": self.category, "description": self.description,
            "items": [ref.to_json() for ref in self.items], "createdBy": self.created_by,
            "createdAt": self.created_at.isoformat(), "source": self.source,
            "frozenAt": self.frozen_at.isoformat() if self.frozen_at else None, "ring": self.ring,
        }  # fmt: skip

    @staticmethod
    def from_json(body: Mapping[str, Any]) -> Release:
        items = tuple(parse_patch_ref(item["osType"], item["key"]) for item in body["items"])
        frozen = body.get("frozenAt")
        return Release(
            name=body["name"], category=body["category"], description=body.get("description", ""),
            items=items, created_by=body["createdBy"], created_at=datetime.fromisoformat(body["createdAt"]),
            source=body["source"], frozen_at=datetime.fromisoformat(frozen) if frozen else None,
            ring=body.get("ring"),
        )  # fmt: skip


def check_items(items: Iterable[PatchRef]) -> list[tuple[str, str]]:
    """The rules of a release's items: at least one, at most MAX_RELEASE_ITEMS, each once, and one version
    per Linux package (an include mask ``name=version`` pins one version; two would both be offered)."""
    items = list(items)
    problems: list[tuple[str, str]] = []
    if not items:
        problems.append(("items", "a release holds at least one update"))
    if len(items) > MAX_RELEASE_ITEMS:
        problems.append(("items", f"at most {MAX_RELEASE_ITEMS:,} updates per release (got {len(items):,})"))
    seen: set[PatchRef] = set()
    versions: dict[str, str] = {}
    for index, ref in enumerate(items):
        if ref in seen:
            problems.append((f"items.{index}", f"{ref.key} is listed twice"))
        seen.add(ref)
        if ref.os_type is OsType.LINUX:
            other = versions.setdefault(str(ref.package), str(ref.version))
            if other != ref.version:
                problems.append((f"items.{index}", f"{ref.package} is already in the release at version "
                                 f"{other}: a release installs one exact version of a package"))
    return problems


def sorted_items(items: Iterable[PatchRef]) -> tuple[PatchRef, ...]:
    return tuple(sorted(set(items), key=lambda ref: (ref.os_type.value, ref.key.lower())))


def frozen_ring_items(installs: Iterable[tuple[PatchRef, datetime]], at: datetime) -> tuple[PatchRef, ...]:
    """The versions a ring had installed at ``at``: of each install (update, when) up to ``at``, the
    latest version of each Linux package and every Windows KB."""
    latest: dict[tuple[OsType, str], tuple[datetime, PatchRef]] = {}
    for ref, when in installs:
        if when > at:
            continue
        slot = (ref.os_type, ref.update_key)
        if slot not in latest or when >= latest[slot][0]:
            latest[slot] = (when, ref)
    return sorted_items(ref for _, ref in latest.values())


# --- what a deployment of a release asks for --------------------------------------------------------


@dataclass(frozen=True)
class InstallLists:
    """The install request's lists for a release on one OS (no classifications: the items alone)."""

    kb_numbers_to_include: tuple[str, ...] = ()
    packages_to_include: tuple[str, ...] = ()


def install_lists(release: Release, os_type: OsType) -> InstallLists:
    """Windows: the KB numbers (digits, as ``kbNumbersToInclude`` takes them); Linux: ``name=version``."""
    items = release.items_for(os_type)
    if os_type is OsType.WINDOWS:
        return InstallLists(kb_numbers_to_include=tuple(str(ref.kb) for ref in items))
    return InstallLists(packages_to_include=tuple(ref.key for ref in items))


@dataclass(frozen=True)
class Held:
    """A release package a machine is offered only at another version than the tested one."""

    package: str
    offered: str
    tested: str

    def __str__(self) -> str:
        return f"{self.package}: offered {self.offered}, tested {self.tested}"


def held_packages(items: Iterable[PatchRef], offered: Mapping[str, str]) -> tuple[Held, ...]:
    """The Linux packages among ``items`` (a release's, or the approved ones) that a machine's pre-scan
    offers (``offered``: package name -> version) only at a version none of the items names: the install
    skips them (the include masks name the tested versions) and the machine reports them held
    (:data:`HELD_REASON`)."""
    tested: dict[str, list[str]] = {}
    for ref in items:
        if ref.os_type is OsType.LINUX:
            tested.setdefault(str(ref.package), []).append(str(ref.version))
    held = []
    for package, versions in sorted(tested.items()):
        version = offered.get(package)
        if version is not None and version not in versions:
            held.append(Held(package, version, ", ".join(versions)))
    return tuple(held)
