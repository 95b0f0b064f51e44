"""Deployment definitions: valid ones round-trip, each invalid one names its field; group evaluation."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shared.deployments.definition import MAX_MACHINES, DefinitionError, validate_definition
from shared.deployments.groups import evaluate_groups
from shared.model.machines import Machine, MachineKind, OsType, PowerState

SUB = "00000000-0000-0000-0000-0000000000aa"


def vm(name: str, os_type: OsType = OsType.LINUX, tags: dict[str, str] | None = None) -> Machine:
    return Machine(
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{name}",
        name, name, MachineKind.AZURE_VM, SUB, "rg", "westeurope", os_type, "os", "1",
        PowerState.RUNNING, "Manual", tags or {},
    )


def windows() -> dict[str, Any]:
    return {
        "name": "Patch-Tuesday.servers_1",
        "operatingSystem": "Windows",
        "targets": {"machines": [vm("app01", OsType.WINDOWS).resource_id]},
        "classifications": ["Critical", "Security Updates", "FeaturePack"],
        "kbNumbersToInclude": ["KB5034441", "890830"],
        "kbNumbersToExclude": ["kb4052623"],
        "schedule": {
            "startTime": "2026-01-13T02:00:00", "timeZone": "Europe/Berlin",
            "recurrence": {"frequency": "Month", "interval": 1,
                           "monthlyOccurrence": {"day": "Tuesday", "occurrence": 2, "offsetDays": 3}},
        },
        "maintenanceWindowMinutes": 120,
        "rebootSetting": "IfRequired",
        "rollout": {"maxConcurrent": 10, "errorBudget": "5%"},
    }


def linux() -> dict[str, Any]:
    return {
        "name": "rhel-critical",
        "operatingSystem": "Linux",
        "targets": {"groups": [{"filter": {"tags": {"env": "prod"}, "tagMatch": "any"}},
                               {"savedSearch": {"query": "Heartbeat | distinct ResourceId"}}],
                    "evaluateGroupsAt": "create"},
        "classifications": ["Critical and security updates"],
        "packagesToInclude": ["openssl=1:3.0.7-27.el9*"],
        "packagesToExclude": ["redhat-release-server*", "kernel-?.x86_64"],
        "schedule": {"startTime": "2099-02-01T22:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 360,
        "rebootSetting": "Never",
    }


def test_windows_definition_round_trips_with_normalised_values():
    definition = validate_definition(windows())
    body = definition.to_json()
    assert body["classifications"] == ["Critical", "Security", "FeaturePack"]
    assert body["kbNumbersToInclude"] == ["5034441", "890830"]
    assert body["kbNumbersToExclude"] == ["4052623"]
    assert validate_definition(body) == definition


def test_linux_definition_round_trips_with_defaults():
    definition = validate_definition(linux())
    body = definition.to_json()
    assert body["classifications"] == ["Critical", "Security"]
    assert body["packagesToExclude"][0] == "redhat-release-server*"
    assert body["rollout"] == {"maxConcurrent": "50%", "errorBudget": "100%"}
    assert validate_definition(body) == definition


def test_rollout_resolves_percentages_against_the_targets():
    rollout = validate_definition(windows()).rollout
    assert rollout.concurrency(40) == 10
    assert rollout.failures_allowed(40) == 2  # 5% of 40
    assert rollout.failures_allowed(3) == 1  # never below one failure


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    *parents, leaf = path.split(".")
    node = body
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return body


_DELETE = object()
BAD_ID = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Web/sites/app"

# (description, base, path to change, value, field the error must name, words the message must hold)
INVALID = [
    ("window 29", windows, "maintenanceWindowMinutes", 29, "maintenanceWindowMinutes", "30 to 360 minutes"),
    ("window 361", windows, "maintenanceWindowMinutes", 361, "maintenanceWindowMinutes", "30 to 360 minutes"),
    ("Windows class on Linux", linux, "classifications", ["FeaturePack"], "classifications",
     "not a Linux classification"),
    ("malformed KB", windows, "kbNumbersToInclude", ["KB12"], "kbNumbersToInclude", "4-8 digits"),
    ("KB on Linux", linux, "kbNumbersToExclude", ["KB5034441"], "kbNumbersToExclude", "Windows only"),
    ("masks on Windows", windows, "packagesToInclude", ["openssl*"], "packagesToInclude", "Linux only"),
    ("empty targets", windows, "targets", {"machines": [], "groups": []}, "targets", "at least one"),
    ("bad resource id", windows, "targets.machines", [BAD_ID], "targets.machines", "not a virtual machine"),
    ("bad time zone", windows, "schedule.timeZone", "Mars/Olympus", "schedule.timeZone", "IANA"),
    ("bad package mask", linux, "packagesToExclude", ["rm -rf /"], "packagesToExclude", "package mask"),
    # Azure's Linux agent ignores the version of an exclusion and excludes every version of the name.
    ("version in an exclude mask", linux, "packagesToExclude", ["openssl=1:3.0.7*"], "packagesToExclude",
     "excludes every version of 'openssl'"),
    ("two versions in a mask", linux, "packagesToInclude", ["openssl=1=2"], "packagesToInclude",
     "package mask"),
    ("empty version", linux, "packagesToInclude", ["openssl="], "packagesToInclude", "package mask"),
    # The agent refuses these two combinations (PackageFilter.is_invalid_classification_combination).
    ("Other with Critical only", linux, "classifications", ["Other", "Critical"], "classifications",
     "without Security"),
    ("Other with Security only", linux, "classifications", ["Other updates", "Security"], "classifications",
     "without Critical"),
    ("rollout 150%", windows, "rollout.maxConcurrent", "150%", "rollout.maxConcurrent", "percentage"),
    ("negative budget", windows, "rollout.errorBudget", -1, "rollout.errorBudget", ">= 0"),
    ("unknown field", windows, "colour", "blue", "colour", "unknown field"),
    ("bad name", windows, "name", "-starts-with-dash", "name", "starting with a letter or digit"),
    ("name too long", windows, "name", "a" * 65, "name", "1-64"),
    ("no name", windows, "name", _DELETE, "name", "required"),
    ("bad OS", windows, "operatingSystem", "Solaris", "operatingSystem", "Windows"),
    ("bad reboot", windows, "rebootSetting", "Sometimes", "rebootSetting", "IfRequired"),
    ("group with both kinds", linux, "targets.groups.0.savedSearch", {"query": "Heartbeat"},
     "targets.groups.0", "exactly one"),
    ("osType in a filter", linux, "targets.groups.0.filter.osType", "Linux", "targets.groups.0.filter",
     "operatingSystem"),
    ("bad filter tagMatch", linux, "targets.groups.0.filter.tagMatch", "most", "targets.groups.0.filter",
     "tagMatch"),
    ("no classification", windows, "classifications", [], "classifications", "at least 1"),
]


@pytest.mark.parametrize(("base", "path", "value", "field", "words"),
                         [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_each_invalid_definition_names_its_field(base, path, value, field, words):
    with pytest.raises(DefinitionError) as caught:
        validate_definition(_set(base(), path, value))
    assert caught.value.field == field
    assert words in caught.value.message


def test_too_many_machines_is_refused_with_the_limit():
    ids = [vm(f"m{n}").resource_id for n in range(MAX_MACHINES + 1)]
    with pytest.raises(DefinitionError) as caught:
        validate_definition(_set(windows(), "targets.machines", ids))
    assert caught.value.field == "targets.machines" and f"{MAX_MACHINES:,}" in caught.value.message


def test_a_deployment_of_the_largest_fleet_is_accepted():
    ids = [vm(f"m{n:05d}").resource_id for n in range(MAX_MACHINES)]
    definition = validate_definition(_set(windows(), "targets.machines", ids))
    assert len(definition.targets.machines) == MAX_MACHINES


def test_a_body_that_is_not_an_object_is_refused():
    with pytest.raises(DefinitionError) as caught:
        validate_definition([1, 2])
    assert caught.value.field == "body"


def test_groups_freeze_matching_machines_of_the_os_once():
    definition = validate_definition(_set(linux(), "targets.machines", [vm("explicit").resource_id]))
    fleet = [vm("web01", tags={"env": "prod"}), vm("web02", tags={"env": "dev"}),
             vm("win01", OsType.WINDOWS, {"env": "prod"}), vm("explicit", tags={"env": "prod"})]
    listings: list[int] = []

    def list_fleet() -> list[Machine]:
        listings.append(1)
        return fleet

    queries: list[str] = []

    def run_query(query: str) -> list[str]:
        queries.append(query)
        return [vm("db01").resource_id, vm("web01").resource_id]

    members = evaluate_groups(definition, list_fleet, run_query)
    # win01 is Windows, web02 is dev, "explicit" is already listed; web01 comes once
    assert members == (vm("web01").resource_id, vm("db01").resource_id)
    assert listings == [1] and queries == ["Heartbeat | distinct ResourceId"]


def test_a_saved_search_returning_something_else_than_machines_names_the_group():
    definition = validate_definition(linux())
    with pytest.raises(DefinitionError) as caught:
        evaluate_groups(definition, list, lambda query: ["not-a-resource-id"])
    assert caught.value.field == "targets.groups.1.savedSearch.query"


def test_groups_of_the_largest_fleet_are_evaluated_and_one_more_machine_is_refused():
    definition = validate_definition(linux())
    fleet = [vm(f"web{n:05d}", tags={"env": "prod"}) for n in range(MAX_MACHINES)]
    members = evaluate_groups(definition, lambda: fleet, lambda query: [])
    assert len(members) == MAX_MACHINES
    with pytest.raises(DefinitionError) as caught:
        evaluate_groups(definition, lambda: fleet, lambda query: [vm("one-more").resource_id])
    assert caught.value.field == "targets.groups" and f"{MAX_MACHINES:,}" in caught.value.message
