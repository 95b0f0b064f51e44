"""A machine by any of its names: its key, its resource id (URL-encoded in a path) or its computer name.

Every route that takes a machine resolves it here, against a :class:`MachineDirectory`: the inventory
(``shared.fleet.machines_table``) or a run's machines (``shared.deployments.run_machines``). The cost
is bounded: a key or a resource id is a point read; only a name that is neither reads the directory's
machines, in one query.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

from shared.model.machines import machine_key, parse_resource_id

# machine_key: the first 32 hex digits of a SHA-256 of the lower-cased resource id.
_KEY = re.compile(r"^[0-9a-f]{32}$")
# The forms a caller may name a machine by, for the messages.
NAME_FORMS = "its id (GET /api/machines), its resource id (URL-encoded) or its computer name (any case)"


@dataclass(frozen=True)
class MachineEntry:
    """One machine of a directory: its key, resource id and computer name, and the row it was read from."""

    key: str
    resource_id: str
    computer_name: str | None
    row: Mapping[str, Any]

    @property
    def resource_name(self) -> str:
        return self.resource_id.rstrip("/").rsplit("/", 1)[-1]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.key, "resourceId": self.resource_id, "computerName": self.computer_name}


class MachineDirectory(Protocol):
    def by_key(self, key: str) -> MachineEntry | None:
        """The machine of this key, by point reads; None if there is none."""

    def entries(self) -> Iterable[MachineEntry]:
        """Every machine, in one query (read only for a computer name); its rows may hold only the names."""

    def complete(self, entry: MachineEntry) -> MachineEntry:
        """The entry of :meth:`entries` with its whole row (a point read where entries are projected)."""


class MachineNotFound(LookupError):
    def __init__(self, given: str, where: str) -> None:
        self.given = given
        super().__init__(f"{where} has no machine {given!r} (looked for it as {NAME_FORMS})")


class MachineNameNotUnique(LookupError):
    def __init__(self, given: str, candidates: list[MachineEntry]) -> None:
        self.given = given
        self.candidates = candidates
        listed = ", ".join(f"{c.key} ({c.resource_id})" for c in candidates)
        super().__init__(f"{len(candidates)} machines are named {given!r}: {listed}; name one by its id "
                         "or its resource id")


def resolve_machine(directory: MachineDirectory, given: str, where: str) -> MachineEntry:
    """The machine ``given`` names in ``directory`` (``where`` names the directory in messages).

    A resource id (``%2F`` decoded) or a key is read directly; anything else, or a key not found by
    its point reads, is matched ignoring case against the computer names, then the resource names.
    """
    text = unquote(given).strip()
    if not text:
        raise MachineNotFound(given, where)
    try:
        parse_resource_id(text)
    except ValueError:
        pass
    else:
        found = directory.by_key(machine_key(text))
        if found is None:
            raise MachineNotFound(text, where)
        return found
    lowered = text.lower()
    if _KEY.match(lowered):
        found = directory.by_key(lowered)
        if found is not None:
            return found
    by_computer: list[MachineEntry] = []
    by_resource_name: list[MachineEntry] = []
    for entry in directory.entries():
        if entry.key == lowered:  # a key where its point reads do not look (another subscription)
            return directory.complete(entry)
        if (entry.computer_name or "").lower() == lowered:
            by_computer.append(entry)
        elif entry.resource_name.lower() == lowered:
            by_resource_name.append(entry)
    matches = by_computer or by_resource_name
    if not matches:
        raise MachineNotFound(text, where)
    if len(matches) > 1:
        raise MachineNameNotUnique(text, sorted(matches, key=lambda m: m.resource_id.lower()))
    return directory.complete(matches[0])
