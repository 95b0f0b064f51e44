"""The Resource Graph stand-in's store (no HTTP): rows kept by id, what a caller may see, and the KQL
shapes the product sends answered by duckdb-kql over JSON ``properties``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from local.arm.fleet import parse_fleet
from local.arm.simulation import InstallOutcome, Simulation
from local.clock import VirtualClock
from local.kql import KqlQueryError
from local.resourcegraph import ResourceGraphFeed, ResourceGraphStore, RowRejected
from local.resourcegraph.store import COLUMN_NAMES
from shared.azure.resource_graph import (
    assessed_patch,
    assessment_patches_query,
    installation_patches_query,
    installed_patch,
    last_installation,
    summaries_query,
)
from shared.model.install_outcome import InstallationState

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"
SUB = "11111111-1111-4111-8111-111111111111"
OTHER = "33333333-3333-4333-8333-333333333333"
VM = f"/subscriptions/{SUB}/resourceGroups/rg-app/providers/Microsoft.Compute/virtualMachines/win-01"
ARC = f"/subscriptions/{SUB}/resourceGroups/rg-dc1/providers/Microsoft.HybridCompute/machines/ubu-arc-01"
NOW = datetime(2026, 2, 11, 6, 0, tzinfo=UTC)  # a few hours after the fixtures' operations


def fixture_rows(name: str) -> list[dict[str, Any]]:
    return list(json.loads((FIXTURES / f"{name}.json").read_text())["data"])


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(NOW)


@pytest.fixture
def store(clock: VirtualClock) -> ResourceGraphStore:
    store = ResourceGraphStore(clock)
    assessed = fixture_rows("resource_graph_patch_assessment")
    for machine in (VM, ARC):
        store.put_assessment(machine, [r for r in assessed if r["id"].startswith(machine)])
    store.put_installation(fixture_rows("resource_graph_patch_installation"))
    return store


def test_the_products_assessment_query_gives_the_patches_of_the_machines_named(store: ResourceGraphStore):
    rows = store.query(assessment_patches_query([VM.upper()]), [SUB])
    patches = [p for p in map(assessed_patch, rows) if p is not None]
    assert len(rows) == len(patches) == 2
    assert {p.patch.kb_id for p in patches} == {"2267602", "5034770"}
    assert rows[0]["properties"]["classifications"] == ["Definition Updates"]  # dynamic values stay JSON


def test_in_tilde_matches_a_list_case_insensitively_and_in_exactly(store: ResourceGraphStore):
    """KQL's ``in~``: "equals to any of the elements", case-insensitive; ``in`` is case-sensitive (Kusto
    documentation, "in and notin~ operators" / "String operators"): the batched read of Arc lists relies
    on it (latest_assessments_query)."""
    latest = f"{ARC}/patchAssessmentResults/latest"
    asked = f"'{latest.upper()}', '{VM.lower()}/patchassessmentresults/latest', 'no-such-id'"
    query = f"patchassessmentresources | where id in~ ({asked}) | project id | order by id asc"
    assert [r["id"] for r in store.query(query, [SUB])] == [f"{VM}/patchAssessmentResults/latest", latest]
    query = f"patchassessmentresources | where id in ('{latest.upper()}', '{latest}') | project id"
    exact = store.query(query, [SUB])
    assert [r["id"] for r in exact] == [latest]


def test_the_products_installation_query_gives_the_runs_patches(store: ResourceGraphStore):
    rows = store.query(installation_patches_query(ARC, "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"), [SUB])
    states = [p.patch.state for p in map(installed_patch, rows) if p is not None]
    assert states == [InstallationState.INSTALLED, InstallationState.PENDING]


def test_the_summaries_query_gives_one_row_a_run_and_filters_by_time(store: ResourceGraphStore):
    rows = store.query(summaries_query("patchinstallationresources"), [SUB])
    # by id: rg-app's VM, then rg-dc1's Arc server
    assert [r["name"] for r in rows] == [
        "6f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0", "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
    ]
    since = datetime(2026, 2, 11, 4, 0, tzinfo=UTC)
    changed = store.query(summaries_query("patchinstallationresources", since), [SUB])
    assert [r["properties"]["status"] for r in changed] == ["CompletedWithWarnings"]


def test_properties_are_a_bag_read_with_kql(store: ResourceGraphStore):
    kql = (
        "patchassessmentresources"
        " | where type has 'softwarepatches' and isnotempty(tostring(properties.kbId))"
        " | mv-expand c = properties.classifications"
        " | project name = tostring(properties.patchName), kb = tostring(properties.kbId), c = tostring(c)"
        " | order by kb asc"
    )
    assert [(r["kb"], r["c"]) for r in store.query(kql)] == [
        ("2267602", "Definition Updates"), ("5034770", "Security Updates"),
    ]
    counts = store.query(
        "patchassessmentresources | where type !has 'softwarepatches'"
        " | project n = toint(properties.availablePatchCountByClassification.security) | order by n"
    )
    assert [r["n"] for r in counts] == [1, 1]
    assert store.query("PatchAssessmentResources | count") == [{"Count": 6}]  # table names in any case


def test_only_the_subscriptions_asked_for_are_seen(store: ResourceGraphStore):
    elsewhere = dict(fixture_rows("resource_graph_patch_assessment")[0], subscriptionId=OTHER,
                     id=VM.replace(SUB, OTHER) + "/patchAssessmentResults/latest")  # fmt: skip
    store.put_assessment(VM.replace(SUB, OTHER), [elsewhere])
    count = "patchassessmentresources | count"
    assert store.query(count, [SUB.upper()]) == [{"Count": 6}]
    assert store.query(count, [OTHER]) == [{"Count": 1}]
    assert store.query(count, []) == [{"Count": 0}]
    assert store.query(count) == [{"Count": 7}]  # no subscriptions named: the whole tenant


def test_a_new_assessment_replaces_the_machines_last_one_and_installs_add_up(store: ResourceGraphStore):
    summary = fixture_rows("resource_graph_patch_assessment")[0]
    store.put_assessment(VM.lower(), [dict(summary, name="new-assessment")])
    rows = store.query("patchassessmentresources | project id, name | order by id asc", [SUB])
    assert [r["name"] for r in rows if r["id"].startswith(VM)] == ["new-assessment"]  # its patches went too
    assert len([r for r in rows if r["id"].startswith(ARC)]) == 3  # another machine's stay
    run = dict(fixture_rows("resource_graph_patch_installation")[0])
    store.put_installation([dict(run, id=run["id"].upper(), type=run["type"].upper(), name="again")])
    names = [r["name"] for r in store.query("patchinstallationresources | where type !has 'softwarepatches'")]
    assert sorted(names) == ["1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "again"]  # same id: replaced
    types = store.query("patchinstallationresources | distinct type")
    assert len(types) == 4 and all(t["type"] == t["type"].lower() for t in types)


def test_assessments_are_kept_7_days_and_installations_30(store: ResourceGraphStore, clock: VirtualClock):
    # The fixtures' assessments end on 10 February, their installations on 11 February.
    clock.advance(timedelta(days=5))
    assert store.query("patchassessmentresources | count") == [{"Count": 6}]
    clock.advance(timedelta(days=2))
    assert store.query("patchassessmentresources | count") == [{"Count": 0}]
    assert store.query("patchinstallationresources | count") == [{"Count": 7}]
    clock.advance(timedelta(days=24))
    assert store.query("patchinstallationresources | count") == [{"Count": 0}]


def test_rows_the_store_cannot_hold_are_refused(store: ResourceGraphStore):
    with pytest.raises(RowRejected, match="unknown column"):
        store.upsert("resources", [{"id": VM, "color": "red"}])
    with pytest.raises(RowRejected, match="needs its id"):
        store.upsert("resources", [{"name": "x"}])
    with pytest.raises(RowRejected, match="no table"):
        store.upsert("securityresources", [{"id": VM}])
    with pytest.raises(KqlQueryError):
        store.query("patchassessmentresources | where (")
    summary = fixture_rows("resource_graph_patch_assessment")[0]
    with pytest.raises(RowRejected, match="put_assessment"):  # a latest assessment replaces the last whole
        store.upsert("patchassessmentresources", [summary])
    with pytest.raises(RowRejected, match="is not under"):
        store.put_assessment(ARC, [summary])  # the VM's row given as the Arc server's
    assert store.query("patchassessmentresources | count") == [{"Count": 6}]  # nothing half-written


def test_queries_see_resource_graphs_columns_and_not_the_stores_keys(store: ResourceGraphStore):
    columns = [c for c, _ in store.run("patchinstallationresources | take 1").columns]
    assert columns == list(COLUMN_NAMES)
    joined = store.run("patchassessmentresources | join kind=inner (patchassessmentresources) on id | take 1")
    assert not any(name.startswith("_") for name, _ in joined.columns)


def test_the_feed_writes_what_the_simulation_did():
    machines = [{
        "subscription": SUB, "resourceGroup": "rg-dc1", "name": "ubu-arc-01", "kind": "arc-server",
        "osType": "Linux", "osName": "ubuntu", "osVersion": "22.04", "location": "westeurope",
        "availableUpdates": ["openssl", "tzdata", "sudo"],
    }]  # fmt: skip
    clock = VirtualClock(NOW)
    simulation = Simulation(parse_fleet({"subscriptions": [{"id": SUB}], "machines": machines}), clock)
    state = simulation.machine(ARC)
    store = ResourceGraphStore(clock)
    feed = ResourceGraphFeed(store)
    feed.machines_added([state.spec])
    feed.assessment_finished(state, "assessment-1", NOW - timedelta(minutes=5), NOW)
    openssl, tzdata, sudo = state.available
    outcome = InstallOutcome([(openssl, "Installed"), (tzdata, "Failed"), (sudo, "NotSelected")],
                             timedelta(minutes=3), False, "NotNeeded", False)  # fmt: skip
    failed = {"code": "PatchInstallationFailed", "message": "1 patch(es) failed to install."}
    state.installation_summary = {"error": failed}
    feed.installation_finished(state, outcome, "run-1", NOW, NOW + timedelta(minutes=3))

    status = "resources | project type, status = tostring(properties.status)"
    assert store.query(status) == [{"type": "microsoft.hybridcompute/machines", "status": "Connected"}]
    state.power_state = "stopped"
    feed.machine_changed(state)
    assert store.query(status) == [{"type": "microsoft.hybridcompute/machines", "status": "Disconnected"}]
    assessed = store.query(assessment_patches_query([ARC]), [SUB])
    assert [p.patch.name for p in map(assessed_patch, assessed) if p] == ["openssl", "sudo", "tzdata"]
    summaries = store.query(summaries_query("patchinstallationresources"))
    runs = [r for r in map(last_installation, summaries) if r]
    assert [(r.installation_id, r.status) for r in runs] == [("run-1", "Failed")]
    error = store.query("patchinstallationresources | where type !has 'softwarepatches' "
                        "| project e = tostring(properties.errorDetails.code)")
    assert error == [{"e": "PatchInstallationFailed"}]


def test_the_simulation_given_the_feed_fills_resource_graph_as_it_goes():
    machines = [{
        "subscription": SUB, "resourceGroup": "rg-dc1", "name": "ubu-arc-01", "kind": "arc-server",
        "osType": "Linux", "osName": "ubuntu", "osVersion": "22.04", "location": "westeurope",
        "availableUpdates": ["openssl", "tzdata"], "behaviours": {"failingPatches": ["openssl"]},
    }]  # fmt: skip
    clock = VirtualClock(NOW)
    store = ResourceGraphStore(clock)
    simulation = Simulation(parse_fleet({"subscriptions": [{"id": SUB}], "machines": machines}), clock,
                            ResourceGraphFeed(store))
    # The machine and the platform's previous assessment, from the start. Arc's osName is the family and
    # osSku the product, as in the ARM stand-in's Arc resource.
    resource = store.query("resources | project name, properties")
    assert resource == [{"name": "ubu-arc-01", "properties": {
        "osName": "linux", "osSku": "ubuntu", "osType": "linux", "osVersion": "22.04", "status": "Connected",
    }}]  # fmt: skip
    summary = "patchassessmentresources | where type !has 'softwarepatches' | project name, properties"
    (previous,) = store.query(summary)
    assert previous["properties"]["startedBy"] == "Platform"
    # An assessment the product asked for replaces it when it finishes, under the activity's id.
    operation = simulation.start_assessment(ARC)
    clock.advance(timedelta(hours=1))
    simulation.settle()
    (latest,) = store.query(summary)
    assert latest["properties"]["startedBy"] == "User"
    assert latest["name"] == operation.output["assessmentActivityId"] != previous["name"]  # type: ignore[index]
    # An install: the run under its activity id, errorDetails from the machine's installation summary.
    body = {"maximumDuration": "PT2H", "rebootSetting": "Never",
            "linuxParameters": {"classificationsToInclude": ["Critical", "Security"]}}
    operation = simulation.start_install(ARC, body)
    clock.advance(timedelta(hours=1))
    simulation.settle()
    run = operation.output["installationActivityId"]  # type: ignore[index]
    states = store.query(installation_patches_query(ARC, run), [SUB])
    assert [(r["name"].split("_")[0], r["properties"]["installationState"]) for r in states] == [
        ("openssl", "Failed"), ("tzdata", "NotSelected"),
    ]
    error = store.query("patchinstallationresources | where type !has 'softwarepatches' "
                        "| project e = tostring(properties.errorDetails.code)")
    assert error == [{"e": "PatchInstallationFailed"}]
    simulation.set_power_state(ARC, "stopped")
    assert store.query("resources | project s = tostring(properties.status)") == [{"s": "Disconnected"}]
