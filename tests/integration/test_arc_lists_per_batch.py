"""Arc-enabled servers' update lists read per batch, not per machine: an assessment run records each Arc
server from its counts and flags its journal entry; applying the batch's journal reads every flagged
machine's list from the Resource Graph stand-in with one query and records each machine again with it
(``shared/assessment/arc_patches.py``, ``journal.py``, ``recording.py``). Through Azurite, the Resource
Graph stand-in (over HTTPS, with its quota) and the Log Analytics stand-in; the rows are the documented
ones of ``tests/fixtures/azure/resource_graph_patch_assessment.json``, one copy per machine."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from local.azurite import Azurite
from local.clock import VirtualClock
from local.loganalytics import LogAnalyticsStandIn
from local.resourcegraph import ResourceGraphStandIn
from local.tls import LocalTls
from shared.assessment import arc_patches
from shared.assessment.journal import APPLIED_ROW, JOURNAL_TABLE, journal_key
from shared.assessment.recording import apply_journal, record_assessment
from shared.assessment.updates_table import UpdateInventory
from shared.azure.log_outbox import log_outbox
from shared.azure.resource_graph import ResourceGraphError, assessed_patch
from shared.model.assessment_outcome import AssessmentOutcome, AvailablePatch
from shared.model.machines import Machine, MachineKind, OsType, PowerState
from shared.settings import Settings, load_settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"
FIXTURE_ARC = ("/subscriptions/11111111-1111-4111-8111-111111111111/resourceGroups/rg-dc1/providers/"
               "Microsoft.HybridCompute/machines/ubu-arc-01")
WORKSPACE = "00000000-0000-4000-8000-0000000000cc"
DCR = "dcr-00000000000000000000000000000ccc"
SUBSCRIPTION = "00000000-0000-4000-8000-000000000003"
STARTED = datetime(2026, 2, 10, 2, 10, tzinfo=UTC)  # the fixture's startDateTime
AT = datetime(2026, 2, 10, 2, 12, tzinfo=UTC)  # when check_assessment saw the result
NOW = AT + timedelta(hours=1)
ARC_MACHINES = 12
_names = itertools.count(1)



@pytest.fixture
def loganalytics(tls: LocalTls) -> Iterator[LogAnalyticsStandIn]:
    with LogAnalyticsStandIn(None, tls, workspace_id=WORKSPACE, dcr_immutable_id=DCR,
                             clock=VirtualClock(NOW)) as running:
        yield running


@pytest.fixture
def graph(tls: LocalTls) -> Iterator[ResourceGraphStandIn]:
    with ResourceGraphStandIn(tls, clock=VirtualClock(NOW)) as running:
        yield running


@pytest.fixture
def settings(azurite: Azurite, loganalytics: LogAnalyticsStandIn, graph: ResourceGraphStandIn, tls: LocalTls,
             monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))  # as the local host does for the app
    return load_settings({
        "DURABLE_TASK_HUB": "PatchTests", "AZURE_AUTH_MODE": "emulator",
        "TARGET_SUBSCRIPTION_IDS": SUBSCRIPTION,
        "ARM_ENDPOINT": "http://127.0.0.1:9", "RESOURCE_GRAPH_ENDPOINT": graph.base_url,
        "STORAGE_CONNECTION_STRING": azurite.connection_string,
        "LOGS_INGESTION_ENDPOINT": loganalytics.base_url,
        "LOGS_DCR_IMMUTABLE_ID": DCR, "LOG_ANALYTICS_WORKSPACE_ID": WORKSPACE,
        "LOGS_QUERY_ENDPOINT": loganalytics.base_url + "/v1",
    })  # fmt: skip


@pytest.fixture
def inventory(azurite: Azurite) -> UpdateInventory:
    return UpdateInventory(TableServiceClient.from_connection_string(azurite.connection_string))


def machine(kind: MachineKind = MachineKind.ARC_SERVER) -> Machine:
    """An Ubuntu machine no other test uses (the Azurite fixture is shared by the session)."""
    name = f"arc{next(_names):03d}-{id(object()) % 10**6}"
    provider = ("Microsoft.HybridCompute/machines" if kind is MachineKind.ARC_SERVER
                else "Microsoft.Compute/virtualMachines")
    return Machine(
        resource_id=f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-dc1/providers/{provider}/{name}",
        name=name, computer_name=f"{name}.contoso.com", kind=kind, subscription_id=SUBSCRIPTION,
        resource_group="rg-dc1", location="northeurope", os_type=OsType.LINUX, os_name="ubuntu",
        os_version="22.04", power_state=PowerState.RUNNING, patch_mode="Manual",
    )  # fmt: skip


def arc_rows(vm: Machine, assessment_id: str, suffix: str) -> list[dict[str, Any]]:
    """The fixture's Arc assessment (openssl Security, tzdata Other) as ``vm``'s, package names made
    unique to the test (``suffix``) so that the catalogue's counts are its own."""
    data = json.loads((FIXTURES / "resource_graph_patch_assessment.json").read_text())["data"]
    rows = []
    for row in copy.deepcopy([r for r in data if r["id"].startswith(FIXTURE_ARC)]):
        row["id"] = row["id"].replace(FIXTURE_ARC, vm.resource_id)
        row["subscriptionId"] = SUBSCRIPTION
        if "patchName" in row["properties"]:
            row["properties"]["patchName"] += suffix
        else:
            row["name"] = assessment_id
        rows.append(row)
    return rows


def counts_only(assessment_id: str, started: datetime = STARTED) -> AssessmentOutcome:
    """An Arc server's assessPatches result: counts, no list (the fixture's 1 security, 1 other)."""
    return AssessmentOutcome(
        status="Succeeded", activity_id=assessment_id, started_at=started, reboot_pending=False,
        critical_and_security_count=1, other_count=1, patches=None,
        counts_by_classification={"Security": 1, "Other": 1},
    )  # fmt: skip


def gaps(inventory: UpdateInventory, vm: Machine) -> dict[str, dict[str, Any]]:
    return {e["RowKey"]: e for e in inventory.machine_updates(vm.key)}


def update_rows(settings: Settings, loganalytics: LogAnalyticsStandIn, vm: Machine) -> list[dict[str, Any]]:
    assert not log_outbox(settings).send_pending("test", NOW).errors
    return loganalytics.query(
        f"Update_CL | where Computer == '{vm.computer_name}' "
        "| project PackageName, PackageVersion, Classification, UpdateState | order by PackageName asc"
    )


def test_a_batch_of_arc_servers_reads_its_lists_with_one_query_and_records_them_as_a_vms(
    settings, inventory, graph, loganalytics, azurite
):
    suffix = f"-{id(object()) % 10**6}"
    journal = journal_key(f"run-{suffix}", 0)
    arcs = [machine() for _ in range(ARC_MACHINES)]
    for n, vm in enumerate(arcs):
        graph.store.put_assessment(vm.resource_id, arc_rows(vm, f"assessment-{n}", suffix))
    # A VM whose own result lists the same updates, recorded into the same batch as today.
    vm = machine(MachineKind.AZURE_VM)
    listed = tuple(p.patch for r in arc_rows(arcs[0], "x", suffix) if (p := assessed_patch(r)) is not None)
    vm_outcome = AssessmentOutcome("Succeeded", "vm-assessment", STARTED, False, 1, 1, listed)
    record_assessment(settings, vm, vm_outcome, AT, "run", journal)

    for n, arc in enumerate(arcs):  # what check_assessment does for each Arc server of the batch
        summary = record_assessment(settings, arc, counts_only(f"assessment-{n}"), AT, "run", journal,
                                    list_awaited=True)
        assert summary.counts_only and summary.missing_total == 2  # the run's answer, from the counts
        assert gaps(inventory, arc) == {}  # recorded when the journal is applied
    assert graph.counters.queries == 0  # no query per machine

    applied = apply_journal(settings, [journal], NOW)

    assert (graph.counters.queries, graph.counters.throttled) == (1, 0)  # one query for the whole batch
    assert applied["machines"] == ARC_MACHINES + 1
    expected_gaps = {f"openssl{suffix}": ("3.0.2-0ubuntu1.15", "Security Updates"),
                     f"tzdata{suffix}": ("2024a-0ubuntu0.22.04", "Other Updates")}
    for arc in [*arcs, vm]:
        found = gaps(inventory, arc)
        assert {k: (g["PackageVersion"], g["Classification"]) for k, g in found.items()} == expected_gaps
        assert {g["State"] for g in found.values()} == {"Needed"}
        assert {g["FirstSeenMissing"] for g in found.values()} == {AT}
        history = next(iter(inventory.history(arc.key)))
        assert history["AssessedAt"] == AT and not history.get("CountsOnly")
    catalogue = {e["RowKey"]: e["MachinesNeeding"] for e in inventory.catalogue()
                 if e["RowKey"] in expected_gaps}
    assert catalogue == dict.fromkeys(expected_gaps, ARC_MACHINES + 1)
    vm_rows = update_rows(settings, loganalytics, vm)
    assert len(vm_rows) == 2 and {r["UpdateState"] for r in vm_rows} == {"Needed"}
    for arc in arcs:
        assert update_rows(settings, loganalytics, arc) == vm_rows
    # Applied once: again is a no-op. An application retried before its end (its mark lost) reads Resource
    # Graph once more and records the same: nothing is counted twice.
    assert apply_journal(settings, [journal], NOW)["alreadyApplied"] == 1
    assert graph.counters.queries == 1
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    service.get_table_client(JOURNAL_TABLE).delete_entity(journal, APPLIED_ROW)
    assert apply_journal(settings, [journal], NOW)["machines"] == ARC_MACHINES + 1
    assert graph.counters.queries == 2
    assert {e["RowKey"]: e["MachinesNeeding"] for e in inventory.catalogue()
            if e["RowKey"] in expected_gaps} == catalogue
    first_seen = {k: g["FirstSeenMissing"] for k, g in gaps(inventory, arcs[0]).items()}
    assert first_seen == dict.fromkeys(expected_gaps, AT)


def test_an_arc_server_resource_graph_has_no_list_for_stays_recorded_from_its_counts(
    settings, inventory, graph, loganalytics
):
    suffix = f"-{id(object()) % 10**6}"
    journal = journal_key(f"run-{suffix}", 0)
    listed, older, absent = machine(), machine(), machine()
    graph.store.put_assessment(listed.resource_id, arc_rows(listed, "assessment-now", suffix))
    graph.store.put_assessment(older.resource_id, arc_rows(older, "assessment-before", suffix))  # lag
    # The older machine's last list, from an earlier scan: a gap the counts alone must not close.
    earlier = AssessmentOutcome("Succeeded", "earlier", None, False, 0, 1, (
        AvailablePatch(f"kept{suffix}_1", f"kept{suffix}", ("Other",), version="1"),))
    before = journal_key(f"r0{suffix}", 0)
    record_assessment(settings, older, earlier, AT - timedelta(days=1), "run-0", before)
    apply_journal(settings, [before], AT - timedelta(days=1))

    record_assessment(settings, listed, counts_only("assessment-now"), AT, "run", journal, list_awaited=True)
    # Resource Graph still has the assessment before this one: lag.
    later = counts_only("assessment-now-2", started=STARTED + timedelta(hours=1))
    record_assessment(settings, older, later, AT + timedelta(hours=1), "run", journal, list_awaited=True)
    record_assessment(settings, absent, counts_only("assessment-x"), AT, "run", journal, list_awaited=True)
    apply_journal(settings, [journal], NOW)

    assert graph.counters.queries == 1  # the three machines in one query
    assert set(gaps(inventory, listed)) == {f"openssl{suffix}", f"tzdata{suffix}"}
    assert {k: g["State"] for k, g in gaps(inventory, older).items()} == {f"kept{suffix}": "Needed"}
    assert gaps(inventory, absent) == {}
    for vm in (older, absent):
        history = next(iter(inventory.history(vm.key)))
        assert history["MissingTotal"] == 2  # the counts are recorded: the summary is right
    assert update_rows(settings, loganalytics, absent) == []


def test_resource_graph_unreadable_leaves_the_batch_recorded_from_counts(
    settings, inventory, graph, monkeypatch
):
    suffix = f"-{id(object()) % 10**6}"
    journal = journal_key(f"run-{suffix}", 0)
    arc = machine()
    graph.store.put_assessment(arc.resource_id, arc_rows(arc, "assessment-now", suffix))

    def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise ResourceGraphError("HTTP 503", status=503, transient=True)

    monkeypatch.setattr(arc_patches, "latest_assessments", unreadable)
    record_assessment(settings, arc, counts_only("assessment-now"), AT, "run", journal, list_awaited=True)
    applied = apply_journal(settings, [journal], NOW)

    assert applied["machines"] == 1  # applied all the same, from the counts
    assert gaps(inventory, arc) == {}
    assert next(iter(inventory.history(arc.key)))["MissingTotal"] == 2
