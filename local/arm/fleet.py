"""The simulated fleet: subscriptions and machines, as read from a JSON or YAML file.

A machine is either given by its ARM resource id, or by subscription + resourceGroup +
name + kind, from which the id is built. Updates are catalogue ids or full entries.
Every error names the machine and the field, because a fleet file is written by hand
as often as it is generated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Discriminator, Field, Tag, ValidationError, model_validator

from local.arm.catalogue import (
    LINUX_CLASSIFICATIONS,
    OS_PROFILES,
    LinuxPackage,
    OsProfile,
    Update,
    WindowsUpdate,
    WireModel,
    lookup,
    os_key,
)

MachineKind = Literal["azure-vm", "arc-server"]
PowerState = Literal["running", "deallocated", "stopped"]
PatchMode = Literal["AutomaticByOS", "AutomaticByPlatform", "ImageDefault", "Manual"]


def _entry_kind(value: Any) -> str:
    """Pick the one union member to validate against, so an error speaks of that member only."""
    if isinstance(value, str):
        return "ref"
    if isinstance(value, WindowsUpdate) or (
        isinstance(value, dict) and ("kbId" in value or "kb_id" in value)
    ):
        return "windows"
    return "linux"


UpdateEntry = Annotated[
    Annotated[str, Tag("ref")]
    | Annotated[WindowsUpdate, Tag("windows")]
    | Annotated[LinuxPackage, Tag("linux")],
    Discriminator(_entry_kind),
]
_UNION_TAGS = frozenset({"ref", "windows", "linux"})

_PROVIDERS: dict[str, str] = {
    "azure-vm": "Microsoft.Compute/virtualMachines",
    "arc-server": "Microsoft.HybridCompute/machines",
}
_RESOURCE_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"(?P<provider>Microsoft\.Compute/virtualMachines|Microsoft\.HybridCompute/machines)/(?P<name>[^/]+)$",
    re.IGNORECASE,
)


# libyaml's C loader and dumper when PyYAML was built with it: a 10,000-machine fleet file
# loads in seconds instead of half a minute. Same safe subset either way.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
# The Linux agent budgets about five minutes per package (AZURE-FACTS, Linux agent time budget).
DEFAULT_INSTALL_SECONDS_PER_PATCH = 300
DEFAULT_ASSESS_SECONDS = 60
# azure-core sleeps Retry-After in real time, so a fleet file may not ask for long waits.
MAX_RETRY_AFTER_SECONDS = 5


class FleetError(ValueError):
    """A fleet file that cannot be used; the message names the machine and the field."""


class Throttle(WireModel):
    requests: int = Field(ge=1)
    retry_after_seconds: int = Field(default=1, ge=0, le=MAX_RETRY_AFTER_SECONDS)


class Behaviours(WireModel):
    """How a simulated machine misbehaves (all off by default)."""

    failing_patches: tuple[str, ...] = ()  # KB ids (with or without "KB") or package names
    install_seconds_per_patch: int = Field(default=DEFAULT_INSTALL_SECONDS_PER_PATCH, ge=1)
    assess_seconds: int = Field(default=DEFAULT_ASSESS_SECONDS, ge=1)
    unreachable: bool = False
    reboot_pending: bool = False
    throttle: Throttle | None = None
    transient_errors: int = Field(default=0, ge=0)
    # Another patch operation (the platform's periodic assessment, Azure Update Manager) runs on the
    # machine for this long from the start: patch operations answer 409 until it ends.
    busy_seconds: int = Field(default=0, ge=0)
    # Updates (KB ids or package names, as failingPatches) that install fine but break the machine's
    # application: once one is installed, every script run on the machine reports the failure.
    breaks_health: tuple[str, ...] = ()
    # The machine's application is broken from the start (before any install).
    unhealthy: bool = False


class DataDisk(WireModel):
    """A managed data disk of an Azure VM (Arc servers have no disks in Azure)."""

    lun: int = Field(ge=0, le=63)
    disk_size_gb: int = Field(default=128, ge=1)


class Subscription(WireModel):
    id: str = Field(pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
    name: str = ""


class Machine(WireModel):
    subscription: str
    resource_group: str
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    kind: MachineKind
    computer_name: str = ""
    os_type: Literal["Windows", "Linux"]
    os_name: str
    os_version: str
    location: str = Field(pattern=r"^[a-z0-9]+$")
    tags: dict[str, str] = Field(default_factory=dict)
    power_state: PowerState = "running"
    patch_mode: PatchMode = "ImageDefault"
    installed_updates: tuple[UpdateEntry, ...] = ()
    available_updates: tuple[UpdateEntry, ...] = ()
    behaviours: Behaviours = Field(default_factory=Behaviours)
    data_disks: tuple[DataDisk, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _parts_from_resource_id(cls, data: Any) -> Any:
        """Accept ``resourceId`` instead of the parts, and check it agrees with any parts given."""
        if not isinstance(data, dict) or ("resourceId" not in data and "resource_id" not in data):
            return data
        data = dict(data)
        resource_id = str(data.pop("resourceId", data.pop("resource_id", "")))
        match = _RESOURCE_ID.match(resource_id)
        if not match:
            raise ValueError(f"resourceId {resource_id!r} is not a virtual machine or Arc server id")
        kind = "azure-vm" if match["provider"].lower() == _PROVIDERS["azure-vm"].lower() else "arc-server"
        for field, value in (
            ("subscription", match["sub"]),
            ("resourceGroup", match["rg"]),
            ("name", match["name"]),
            ("kind", kind),
        ):
            if field in data and str(data[field]).lower() != value.lower():
                raise ValueError(f"{field} {data[field]!r} disagrees with resourceId ({value!r})")
            data[field] = value
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Machine:
        if self.os_key is None:
            raise ValueError(
                f"osName/osVersion {self.os_name!r} {self.os_version!r} is not a known "
                f"{self.os_type} version (known: {', '.join(OS_PROFILES)})"
            )
        if self.kind == "arc-server" and self.power_state == "deallocated":
            raise ValueError("powerState 'deallocated' is for Azure VMs; an Arc server is running or stopped")
        if self.kind == "arc-server" and self.data_disks:
            raise ValueError("dataDisks: an Arc server has no disks in Azure")
        if len({d.lun for d in self.data_disks}) != len(self.data_disks):
            raise ValueError("dataDisks: two disks on one lun")
        for field in ("installed_updates", "available_updates"):
            for index, entry in enumerate(getattr(self, field)):
                self._check_entry(f"{Machine.model_fields[field].alias}[{index}]", entry)
        return self

    def _check_entry(self, where: str, entry: UpdateEntry) -> None:
        if isinstance(entry, str):
            if lookup(self.os_key or "", entry) is None:
                raise ValueError(f"{where}: {entry!r} is not in the catalogue for {self.os_key}")
        elif isinstance(entry, WindowsUpdate) != (self.os_type == "Windows"):
            raise ValueError(f"{where}: a {type(entry).__name__} cannot apply to a {self.os_type} machine")
        elif isinstance(entry, LinuxPackage) and not set(entry.classifications) <= LINUX_CLASSIFICATIONS:
            raise ValueError(f"{where}: classifications must be among {sorted(LINUX_CLASSIFICATIONS)}")

    @property
    def resource_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/{_PROVIDERS[self.kind]}/{self.name}"
        )

    @property
    def os_key(self) -> str | None:
        return os_key(self.os_type, self.os_name, self.os_version)

    @property
    def os_profile(self) -> OsProfile:
        return OS_PROFILES[self.os_key or ""]

    @property
    def host_name(self) -> str:
        return self.computer_name or self.name

    def resolved(self, entries: tuple[UpdateEntry, ...]) -> list[Update]:
        """Catalogue references replaced by the full update."""
        found: list[Update] = []
        for entry in entries:
            update = lookup(self.os_key or "", entry) if isinstance(entry, str) else entry
            assert update is not None, "checked when the fleet was loaded"
            found.append(update)
        return found


class Fleet(WireModel):
    subscriptions: tuple[Subscription, ...] = Field(min_length=1)
    machines: tuple[Machine, ...] = ()

    @model_validator(mode="after")
    def _machines_belong(self) -> Fleet:
        known = {s.id.lower() for s in self.subscriptions}
        seen: set[str] = set()
        for index, machine in enumerate(self.machines):
            if machine.subscription.lower() not in known:
                raise ValueError(
                    f"machines[{index}] ({machine.name}): subscription {machine.subscription!r} "
                    "is not listed under subscriptions"
                )
            if machine.resource_id.lower() in seen:
                raise ValueError(
                    f"machines[{index}] ({machine.name}): resource id {machine.resource_id} appears twice"
                )
            seen.add(machine.resource_id.lower())
        return self

    def subscription_ids(self) -> list[str]:
        return [s.id for s in self.subscriptions]

    def to_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True)

    def to_yaml(self) -> str:
        return yaml.dump(
            self.to_data(), Dumper=_YAML_DUMPER, sort_keys=False, width=110, allow_unicode=True
        )

    def to_json(self) -> str:
        return json.dumps(self.to_data(), indent=2) + "\n"

    def save(self, path: Path) -> None:
        path.write_text(self.to_json() if path.suffix.lower() == ".json" else self.to_yaml())


def parse_fleet(data: Any) -> Fleet:
    """Validate fleet data; a failure raises :class:`FleetError` naming the machine and field."""
    try:
        return Fleet.model_validate(data)
    except ValidationError as error:
        raise FleetError(_describe(error, data)) from None


def load_fleet(path: Path | str) -> Fleet:
    """Read a fleet from ``.json``, ``.yaml`` or ``.yml``."""
    path = Path(path)
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.load(text, Loader=_YAML_LOADER)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise FleetError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {error}") from None
    try:
        return parse_fleet(data)
    except FleetError as error:
        raise FleetError(f"{path}: {error}") from None


def _describe(error: ValidationError, data: Any) -> str:
    lines = []
    for problem in error.errors():
        loc = list(problem["loc"])
        prefix = ""
        if len(loc) >= 2 and loc[0] == "machines" and isinstance(loc[1], int):
            prefix = f"machine {_machine_name(data, loc[1])!r} (machines[{loc[1]}])"
            loc = loc[2:]
        field = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc if part not in _UNION_TAGS
        ).lstrip(".")
        message = problem["msg"].removeprefix("Value error, ")
        subject = ": ".join(part for part in (prefix, field) if part)
        lines.append(f"{subject}: {message}" if subject else message)
    return "; ".join(dict.fromkeys(lines))


def _machine_name(data: Any, index: int) -> str:
    try:
        machine = data["machines"][index]
        return str(machine.get("name") or machine.get("resourceId") or f"#{index}")
    except (KeyError, IndexError, TypeError, AttributeError):
        return f"#{index}"
