"""Asset categories: the rules of a category body, and where a machine is placed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.fleet.heartbeats import heartbeat_row, heartbeats_to_send, last_heartbeat
from shared.fleet.machine_query import QueryError, parse_machine_query
from shared.governance.categories import (
    DEFAULT_RING,
    UNCATEGORISED,
    AssetCategory,
    CategoryError,
    DeadlineGroup,
    Placement,
    SearchUnavailable,
    categorise,
    classification_group,
    deadline_days,
    membership_key,
    saved_searches,
    validate_category,
)
from shared.model.machines import Machine, MachineKind, OsType, PowerState

SUBSCRIPTION = "00000000-0000-4000-8000-0000000000c1"
_AT = datetime(2026, 1, 12, tzinfo=UTC)


def machine(name: str, tags: dict[str, str] | None = None, os_type: OsType = OsType.LINUX,
            subscription: str = SUBSCRIPTION, group: str = "rg-app", location: str = "westeurope") -> Machine:
    resource_id = (f"/subscriptions/{subscription}/resourceGroups/{group}/providers/"
                   f"Microsoft.Compute/virtualMachines/{name}")
    return Machine(resource_id, name, name, MachineKind.AZURE_VM, subscription, group, location, os_type,
                   "Ubuntu" if os_type is OsType.LINUX else "Windows Server 2022", "22.04",
                   PowerState.RUNNING, "AutomaticByPlatform", tags or {})


def body(name: str = "web", **changes: Any) -> dict[str, Any]:
    return {"name": name, "criticality": 2, "membership": {"tags": {"role": name}}} | changes


def category(name: str = "web", **changes: Any) -> AssetCategory:
    return validate_category(body(name, **changes))


def bad_fields(given: Any) -> list[str]:
    with pytest.raises(CategoryError) as raised:
        validate_category(given)
    return [field for field, _ in raised.value.details]


# --- validation ---------------------------------------------------------------------------------------


def test_a_minimal_category_gets_the_documented_defaults_and_reads_back_the_same():
    made = category()
    assert [r.name for r in made.rings] == [DEFAULT_RING] and made.test_ring == DEFAULT_RING
    assert made.to_json()["deadlines"] == {"critical": 7, "security": 14, "other": 60}
    assert made.to_json()["testEvidence"] == {"minMachines": 1, "bakeHours": 24}
    assert made.requires_approval is True and made.auto_approve is None
    assert made.to_json()["membership"] == {"tags": {"role": "web"}}  # only what was said
    assert validate_category(made.to_json()) == made


def test_membership_filters_follow_the_assessment_scope_rules_and_are_stored_canonical():
    made = category(membership={"subscriptionIds": [SUBSCRIPTION.upper()], "locations": ["West Europe"],
                                "osType": "linux", "tags": {"role": "web", "tier": "*"}, "tagMatch": "ANY"})
    assert made.to_json()["membership"] == {
        "subscriptionIds": [SUBSCRIPTION], "locations": ["westeurope"], "osType": "Linux",
        "tags": {"role": "web", "tier": "*"}, "tagMatch": "any"}


def test_every_invalid_field_is_reported_at_once_with_its_rule():
    given = {
        "name": "bad name!", "criticality": 5, "priority": -1, "patchOrder": 1.5, "colour": "blue",
        "owner": {"name": ""},
        "membership": {"subscriptionIds": ["not-a-guid"], "locations": ["east us!"], "tagMatch": "some",
                       "osType": "mac", "machineIds": ["/subscriptions/x"]},
        "rings": [{"name": "test"}, {"name": "prod", "membership": {"all": True}}],
        "deadlines": {"critical": 0, "security": 1.5, "other": 3651},
        "testEvidence": {"minMachines": 0, "bakeHours": -1},
        "autoApprove": {"classifications": ["important"]},
    }
    with pytest.raises(CategoryError) as raised:
        validate_category(given)
    details = dict(raised.value.details)
    assert set(details) == {
        "name", "criticality", "priority", "patchOrder", "colour", "owner.name",
        "membership.subscriptionIds", "membership.locations", "membership.tagMatch", "membership.osType",
        "membership.machineIds", "rings.1.membership", "deadlines.critical", "deadlines.security",
        "deadlines.other", "testEvidence.minMachines", "testEvidence.bakeHours",
        "autoApprove.classifications.0",
    }
    assert "GUID" in details["membership.subscriptionIds"]
    assert details["colour"] == "unknown field"
    assert "last ring takes the rest" in details["rings.1.membership"]
    assert raised.value.field == "name"


@pytest.mark.parametrize(("rings", "rule"), [
    ([{"name": "test"}, {"name": "production"}], "needs a membership"),
    ([{"name": "test", "membership": {"tags": {"ring": "test"}}},
      {"name": "prod", "membership": {"tags": {"a": "b"}}}], "leave its membership out"),
    ([{"name": "test", "membership": {"tags": {"ring": "test"}}}, {"name": "TEST"}], "named twice"),
    ([], "at least 1"),
])
def test_ring_rules(rings, rule):
    with pytest.raises(CategoryError) as raised:
        validate_category(body(rings=rings))
    assert raised.value.field == "rings" and rule in raised.value.message


def test_membership_must_name_machines_or_say_all_and_not_both():
    assert bad_fields(body(membership={})) == ["membership"]
    assert bad_fields(body(membership={"all": True, "tags": {"a": "b"}})) == ["membership"]
    assert category(membership={"all": True}).membership.all
    assert category(membership={"savedSearch": {"query": "Heartbeat_CL | distinct ResourceId"}})


def test_uncategorised_is_reserved_and_auto_approval_needs_approval():
    assert bad_fields(body("Uncategorised")) == ["name"]
    refused = body(requiresApproval=False, autoApprove={"classifications": ["security"]})
    assert bad_fields(refused) == ["autoApprove"]
    assert bad_fields([1]) == ["body"]
    assert category(autoApprove={"classifications": ["security", "critical", "security"], "minBakeHours": 72}
                    ).auto_approve.classifications == [DeadlineGroup.SECURITY, DeadlineGroup.CRITICAL]


# --- placement ----------------------------------------------------------------------------------------


def test_a_machine_goes_to_the_first_matching_category_by_priority_then_name():
    web = category("web", priority=20)
    everything = category("all-linux", priority=90, membership={"osType": "Linux"})
    critical = category("critical-web", priority=10, membership={"tags": {"role": "web", "tier": "1"}})
    tied = category("a-web", priority=20, membership={"tags": {"role": "web"}})  # as web's: the name decides
    found = categorise(machine("web01", {"role": "web", "tier": "1"}), [everything, web, tied, critical], {})
    assert found == Placement("critical-web", DEFAULT_RING)
    assert categorise(machine("web02", {"role": "web"}), [everything, web, tied], {}).category == "a-web"
    assert categorise(machine("db01", {"role": "db"}), [everything, web], {}).category == "all-linux"


def test_no_match_is_uncategorised_without_a_ring():
    placed = categorise(machine("win01", {"role": "db"}, OsType.WINDOWS), [category("web")], {})
    assert placed == Placement(UNCATEGORISED, None)


def test_rings_take_machines_in_order_and_the_last_takes_the_rest():
    rings = [{"name": "canary", "membership": {"machineIds": [machine("web01").resource_id]}},
             {"name": "pilot", "membership": {"tags": {"ring": "pilot"}}},
             {"name": "production"}]
    web = category(rings=rings)
    assert web.test_ring == "canary"
    pilot_too = machine("web01", {"role": "web", "ring": "pilot"})  # canary first: rings are in order
    assert categorise(pilot_too, [web], {}).ring == "canary"
    assert categorise(machine("web02", {"role": "web", "ring": "pilot"}), [web], {}).ring == "pilot"
    assert categorise(machine("web03", {"role": "web"}), [web], {}).ring == "production"


def test_a_saved_search_narrows_with_the_filters_and_decides_membership():
    query = "Heartbeat_CL | where Computer startswith 'sql' | distinct ResourceId"
    sql = category("sql", priority=1, membership={"savedSearch": {"query": query}, "osType": "Windows"})
    fallback = category("windows", priority=5, membership={"osType": "Windows"})
    sql01, sql02 = machine("sql01", os_type=OsType.WINDOWS), machine("sql02", os_type=OsType.WINDOWS)
    members = {membership_key("sql"): {sql01.resource_id.lower()}}
    assert saved_searches([sql, fallback]) == {"sql": query}
    assert categorise(sql01, [sql, fallback], members).category == "sql"
    assert categorise(sql02, [sql, fallback], members).category == "windows"
    # A Linux machine the search returned still fails the osType filter: both must match.
    linux_sql = machine("sql03")
    returned = {"sql": {linux_sql.resource_id.lower()}}
    assert categorise(linux_sql, [sql, fallback], returned).category == UNCATEGORISED


def test_a_ring_saved_search_is_keyed_by_category_and_ring():
    rings = [{"name": "test", "membership": {"savedSearch": {"query": "Q"}}}, {"name": "production"}]
    web = category("Web", rings=rings, membership={"tags": {"role": "web"}})
    assert saved_searches([web]) == {"web|test": "Q"}
    web01 = machine("web01", {"role": "web"})
    assert categorise(web01, [web], {"web|test": {web01.resource_id.lower()}}).ring == "test"
    assert categorise(web01, [web], {"web|test": set()}).ring == "production"


def test_a_search_without_result_cannot_place_the_machines_it_might_hold():
    sql = category("sql", priority=1, membership={"savedSearch": {"query": "Q"}, "osType": "Windows"})
    with pytest.raises(SearchUnavailable) as raised:
        categorise(machine("sql01", os_type=OsType.WINDOWS), [sql], {})
    assert raised.value.key == "sql"
    # ... but a machine its other filters exclude is placed without it.
    assert categorise(machine("web01"), [sql], {}).category == UNCATEGORISED


# --- deadlines ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("os_type", "classification", "group"), [
    (OsType.WINDOWS, "Critical Updates", DeadlineGroup.CRITICAL),
    (OsType.WINDOWS, "Security Updates", DeadlineGroup.SECURITY),
    (OsType.WINDOWS, "Update Rollups", DeadlineGroup.OTHER),
    (OsType.WINDOWS, "Definition Updates", DeadlineGroup.OTHER),
    (OsType.LINUX, "Critical", DeadlineGroup.CRITICAL),
    (OsType.LINUX, "Security", DeadlineGroup.SECURITY),
    (OsType.LINUX, "Security-ESM", DeadlineGroup.SECURITY),
    (OsType.LINUX, "Other", DeadlineGroup.OTHER),
])
def test_classification_groups(os_type, classification, group):
    assert classification_group(os_type, classification) is group


def test_deadline_days_per_group_and_defaults_for_the_uncategorised():
    strict = category(deadlines={"critical": 2, "security": 5})
    assert deadline_days(strict, OsType.WINDOWS, "Critical Updates") == 2
    assert deadline_days(strict, OsType.LINUX, "Security-ESM") == 5
    assert deadline_days(strict, OsType.LINUX, "Other") == 60  # not given: the default
    assert deadline_days(None, OsType.WINDOWS, "Security Updates") == 14


# --- the heartbeat carries the placement --------------------------------------------------------------


def test_the_heartbeat_row_carries_the_placement_and_a_new_placement_sends_it():
    web01 = machine("web01", {"role": "web"})
    row = heartbeat_row(web01, _AT, "run-1", ("web", "production"))
    assert (row["AssetCategory"], row["Ring"]) == ("web", "production")
    assert (heartbeat_row(web01, _AT, "run-1", (UNCATEGORISED, None))["Ring"]) == ""
    _, sent = heartbeats_to_send([web01], _AT, "run-1", {}, {web01.key: ("web", "production")})
    last = {web01.key: last_heartbeat(sent[web01.key])}
    moved = {web01.key: ("db", "production")}
    rows, _ = heartbeats_to_send([web01], _AT.replace(minute=15), "run-2", last, moved)
    assert [r["AssetCategory"] for r in rows] == ["db"]  # changed: sent before the hour is up


def test_the_machine_list_filters_on_category_and_ring_as_stored():
    query = parse_machine_query({"category": " web ", "ring": "test", "os": "linux"})
    assert query.equals == {"OsType": "Linux", "AssetCategory": "web", "Ring": "test"}
    with pytest.raises(QueryError) as raised:
        parse_machine_query({"category": "x" * 65, "ring": ""})
    assert [field for field, _ in raised.value.details] == ["category", "ring"]
