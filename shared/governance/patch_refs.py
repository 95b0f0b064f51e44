"""One update at one exact version, the unit that is tested, authorized, approved and released.

A Windows update is its KB article: a KB names one update, and a newer fix is a new KB. A Linux update
is a package at a version: the same package at another version is another update, which is what lets a
release install exactly the version that was tested (the include mask ``name=version``, AZURE-FACTS
"Install parameters"; Azure/LinuxPatchExtension PackageFilter matches the version part against the
version the machine is offered).

Keys:

- :attr:`PatchRef.key`: ``KB5034441`` or ``openssl=3.0.2-0ubuntu1.12``, the name people and the API use;
- :attr:`PatchRef.update_key`: the version-less key of the assessment inventory's gaps
  (``shared.assessment.updates_table``: ``KB<digits>`` or the package name), to join with what a machine
  is missing;
- :attr:`PatchRef.table_key`: ``<OS>|<key>`` for Table keys (a package name and version hold none of
  the characters Table keys refuse: ``/``, ``\\``, ``#``, ``?``, control characters).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.model.kb import kb_digits, parse_kb
from shared.model.machines import OsType

# What a Linux package name and version are made of (Debian policy and RPM: letters, digits and
# ``.+-_:~``), the characters the deployment definition's package masks accept without wildcards
# (shared.deployments.definition.PACKAGE_MASK_PATTERN).
PACKAGE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
PACKAGE_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+:~-]{0,127}$")


class PatchRefError(ValueError):
    """Not a patch reference; :attr:`field` names the field at fault."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True, order=True)
class PatchRef:
    os_type: OsType
    kb: str | None = None  # Windows: digits only
    package: str | None = None  # Linux: the package name as the agent reports it
    version: str | None = None  # Linux: the exact version

    def __post_init__(self) -> None:
        if self.os_type is OsType.WINDOWS:
            if not self.kb or self.package or self.version:
                raise PatchRefError("kb", "a Windows update is named by its KB number alone")
        elif not self.package or not self.version or self.kb:
            raise PatchRefError("package", "a Linux update is a package name and an exact version")

    @property
    def key(self) -> str:
        return f"KB{self.kb}" if self.os_type is OsType.WINDOWS else f"{self.package}={self.version}"

    @property
    def update_key(self) -> str:
        return f"KB{self.kb}" if self.os_type is OsType.WINDOWS else str(self.package)

    @property
    def table_key(self) -> str:
        return f"{self.os_type.value}|{self.key}"

    def to_json(self) -> dict[str, Any]:
        if self.os_type is OsType.WINDOWS:
            return {"osType": self.os_type.value, "key": self.key, "kbId": self.kb}
        return {"osType": self.os_type.value, "key": self.key, "packageName": self.package,
                "version": self.version}


def parse_patch_ref(os_type: OsType | str, text: str, field_name: str = "key") -> PatchRef:
    """A reference as people write it: ``KB5034441`` (or the digits) on Windows, ``name=version`` on Linux."""
    try:
        os_type = OsType(os_type)
    except ValueError:
        raise PatchRefError("osType", f"{os_type!r} is not Windows or Linux") from None
    if not isinstance(text, str):
        raise PatchRefError(field_name, "must be a string")
    if os_type is OsType.WINDOWS:
        try:
            return PatchRef(os_type, kb=parse_kb(text))
        except ValueError as error:
            raise PatchRefError(field_name, str(error)) from None
    name, separator, version = text.partition("=")
    if not separator or not PACKAGE_NAME_PATTERN.match(name) or not PACKAGE_VERSION_PATTERN.match(version):
        raise PatchRefError(
            field_name,
            f"{text!r} is not a Linux update: write the package and its exact version as name=version",
        )
    return PatchRef(os_type, package=name, version=version)


def parse_table_key(value: str) -> PatchRef:
    """The reference :attr:`PatchRef.table_key` wrote."""
    os_name, _, key = value.partition("|")
    return parse_patch_ref(os_name, key)


def ref_of_row(os_type: OsType | str, row: Mapping[str, Any]) -> PatchRef | None:
    """The update a log row or gap entity names (columns ``KBID``, ``PackageName``, ``PackageVersion``, as
    ``Update_CL``, ``UpdateRunProgress_CL`` and the ``MachineUpdates`` gaps have them); None when it names
    none (a Windows update without a KB, a Linux one without a version)."""
    os_type = OsType(os_type)
    if os_type is OsType.WINDOWS:
        kb = kb_digits(str(row.get("KBID") or ""))
        return PatchRef(os_type, kb=kb) if kb else None
    name, version = row.get("PackageName"), row.get("PackageVersion")
    if not name or not version:
        return None
    return PatchRef(os_type, package=str(name), version=str(version))
