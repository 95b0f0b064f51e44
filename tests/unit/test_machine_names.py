"""A machine by any of its names (shared.fleet.machine_names), and what each lookup costs."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest

from shared.fleet.machine_names import MachineEntry, MachineNameNotUnique, MachineNotFound, resolve_machine
from shared.model.machines import machine_key

SUB = "00000000-0000-0000-0000-0000000000aa"


def entry(name: str, computer: str | None, group: str = "rg") -> MachineEntry:
    resource_id = (f"/subscriptions/{SUB}/resourceGroups/{group}/providers/Microsoft.Compute/"
                   f"virtualMachines/{name}")
    return MachineEntry(machine_key(resource_id), resource_id, computer, {"RowKey": machine_key(resource_id)})


class Directory:
    """A directory that counts its reads: point reads by key, and whole passes over its machines."""

    where = "the test fleet"

    def __init__(self, *entries: MachineEntry, reachable_by_key: bool = True) -> None:
        self._entries = entries
        self._reachable = reachable_by_key
        self.point_reads = 0
        self.passes = 0

    def by_key(self, key: str) -> MachineEntry | None:
        self.point_reads += 1
        found = [e for e in self._entries if e.key == key]
        return found[0] if found and self._reachable else None

    def entries(self) -> Iterator[MachineEntry]:
        self.passes += 1
        yield from self._entries

    def complete(self, found: MachineEntry) -> MachineEntry:
        return found


SQL = entry("vm-sql-025", "SQL-PROD-025")
TWIN_A, TWIN_B = entry("twin-a", "twin", "rg-a"), entry("twin-b", "TWIN", "rg-b")
NAMELESS = entry("arc-box", None)


def test_a_key_is_one_point_read_and_no_pass():
    directory = Directory(SQL, TWIN_A)
    assert resolve_machine(directory, SQL.key, directory.where) is SQL
    assert (directory.point_reads, directory.passes) == (1, 0)


@pytest.mark.parametrize("given", [SQL.resource_id, quote(SQL.resource_id, safe=""), SQL.resource_id.upper()])
def test_a_resource_id_plain_encoded_or_in_any_case_is_one_point_read(given):
    directory = Directory(SQL, TWIN_A)
    assert resolve_machine(directory, given, directory.where) is SQL
    assert (directory.point_reads, directory.passes) == (1, 0)


@pytest.mark.parametrize("given", ["SQL-PROD-025", "sql-prod-025", " Sql-Prod-025 "])
def test_a_computer_name_in_any_case_is_one_pass(given):
    directory = Directory(SQL, TWIN_A, NAMELESS)
    assert resolve_machine(directory, given, directory.where) is SQL
    assert (directory.point_reads, directory.passes) == (0, 1)


def test_the_resource_name_answers_when_no_computer_name_does():
    directory = Directory(SQL, NAMELESS)
    assert resolve_machine(directory, "ARC-BOX", directory.where) is NAMELESS


def test_a_key_the_point_reads_miss_is_found_by_the_one_pass():
    directory = Directory(SQL, reachable_by_key=False)
    assert resolve_machine(directory, SQL.key, directory.where) is SQL
    assert (directory.point_reads, directory.passes) == (1, 1)


def test_a_shared_name_lists_the_candidates():
    directory = Directory(SQL, TWIN_A, TWIN_B)
    with pytest.raises(MachineNameNotUnique) as raised:
        resolve_machine(directory, "Twin", directory.where)
    assert [c.key for c in raised.value.candidates] == [TWIN_A.key, TWIN_B.key]
    assert TWIN_A.resource_id in str(raised.value) and TWIN_B.resource_id in str(raised.value)


@pytest.mark.parametrize("given", ["nobody", "", "%2F", entry("gone", "gone").resource_id])
def test_nothing_found_names_what_was_looked_for_and_where(given):
    directory = Directory(SQL)
    with pytest.raises(MachineNotFound) as raised:
        resolve_machine(directory, given, directory.where)
    assert str(raised.value).startswith("the test fleet has no machine")
    assert "computer name" in str(raised.value)
    # a resource id that is not there is not looked for by name: no pass over the fleet
    if given.startswith("/subscriptions/"):
        assert directory.passes == 0
