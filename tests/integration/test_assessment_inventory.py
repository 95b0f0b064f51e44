"""Recording assessments into Azurite and the Log Analytics stand-in, through the real SDK clients."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from local.azurite import Azurite
from local.clock import VirtualClock
from local.loganalytics import LogAnalyticsStandIn
from local.tls import LocalTls
from shared.assessment.journal import JournalEntry, carried_columns, carried_text, journal_key
from shared.assessment.recording import apply_journal, record_assessment, record_failure, record_scan
from shared.assessment.records import MachineAssessmentSummary
from shared.assessment.updates_table import (
    CATALOGUE_TABLE,
    HISTORY_PREFIX,
    MACHINE_UPDATES_TABLE,
    UpdateInventory,
    missing_keys,
)
from shared.azure.log_outbox import log_outbox
from shared.fleet.machines_table import MachineInventory
from shared.model.assessment_outcome import AssessmentFailure, AssessmentOutcome, AvailablePatch, Readiness
from shared.model.machines import Machine, MachineKind, OsType, PowerState
from shared.settings import Settings, load_settings

WORKSPACE = "00000000-0000-4000-8000-0000000000bb"
DCR = "dcr-00000000000000000000000000000bbb"
SUBSCRIPTION = "00000000-0000-4000-8000-000000000002"
DAY1 = datetime(2026, 1, 12, 3, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)
NOW = DAY3 + timedelta(hours=6)
_names = itertools.count(1)



@pytest.fixture
def loganalytics(tls: LocalTls) -> Iterator[LogAnalyticsStandIn]:
    with LogAnalyticsStandIn(
        None, tls, workspace_id=WORKSPACE, dcr_immutable_id=DCR, clock=VirtualClock(NOW)
    ) as running:
        yield running


@pytest.fixture
def settings(
    azurite: Azurite, loganalytics: LogAnalyticsStandIn, tls: LocalTls, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))  # as the local host does for the app
    return load_settings(
        {
            "DURABLE_TASK_HUB": "PatchTests",
            "AZURE_AUTH_MODE": "emulator",
            "TARGET_SUBSCRIPTION_IDS": SUBSCRIPTION,
            "ARM_ENDPOINT": "http://127.0.0.1:9",
            "STORAGE_CONNECTION_STRING": azurite.connection_string,
            "LOGS_INGESTION_ENDPOINT": loganalytics.base_url,
            "LOGS_DCR_IMMUTABLE_ID": DCR,
            "LOG_ANALYTICS_WORKSPACE_ID": WORKSPACE,
            "LOGS_QUERY_ENDPOINT": loganalytics.base_url + "/v1",
        }
    )


def record(settings: Settings, vm: Machine, result: AssessmentOutcome, at: datetime,
           run_id: str) -> MachineAssessmentSummary:
    """One machine's scan as its own batch: recorded, then the batch's journal applied (as the batch
    orchestration does at its end). The journal is the run's and the machine's: tests share Azurite."""
    journal = journal_key(f"{run_id}-{vm.key}", 0)
    summary = record_assessment(settings, vm, result, at, run_id, journal)
    apply_journal(settings, [journal], at)
    return summary


def send_queued_rows(settings: Settings) -> None:
    """What the orchestration's sender does after a batch: upload the rows the recording queued."""
    report = log_outbox(settings).send_pending("test", DAY3)
    assert not report.errors, report


@pytest.fixture
def inventory(azurite: Azurite) -> UpdateInventory:
    return UpdateInventory(TableServiceClient.from_connection_string(azurite.connection_string))


def machine(os_type: OsType = OsType.WINDOWS, name: str | None = None) -> Machine:
    """A machine no other test uses (the Azurite fixture is shared by the session)."""
    name = name or f"vm{next(_names):03d}-{id(object()) % 10**6}"
    windows = os_type is OsType.WINDOWS
    return Machine(
        resource_id=f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/"
        f"Microsoft.Compute/virtualMachines/{name}",
        name=name,
        computer_name=f"{name}.contoso.com",
        kind=MachineKind.AZURE_VM,
        subscription_id=SUBSCRIPTION,
        resource_group="rg",
        location="westeurope",
        os_type=os_type,
        os_name="Windows Server 2022 Datacenter" if windows else "ubuntu",
        os_version="10.0.20348.2227" if windows else "22.04",
        power_state=PowerState.RUNNING,
        patch_mode="Manual",
    )


def kbs(count: int) -> list[str]:
    """KB numbers no other test uses, so catalogue counts belong to this test alone."""
    base = 7_000_000 + next(_names) * 100
    return [str(base + i) for i in range(count)]


def win(kb: str, *classes: str, title: str = "") -> AvailablePatch:
    return AvailablePatch(
        patch_id=f"id-{kb}",
        name=title or f"2026-01 Update for Windows Server 2022 (KB{kb})",
        classifications=classes,
        kb_id=kb,
        reboot_behavior="CanRequestReboot",
        published_date=datetime(2026, 1, 6, tzinfo=UTC),
    )


def pkg(name: str, version: str, *classes: str) -> AvailablePatch:
    return AvailablePatch(patch_id=f"{name}_{version}", name=name, classifications=classes, version=version)


def outcome(*patches: AvailablePatch, reboot: bool = False) -> AssessmentOutcome:
    return AssessmentOutcome(
        status="Succeeded",
        activity_id="activity",
        started_at=None,
        reboot_pending=reboot,
        critical_and_security_count=0,
        other_count=0,
        patches=patches,
    )


def gaps(inventory: UpdateInventory, vm: Machine) -> dict[str, dict[str, Any]]:
    return {e["RowKey"]: e for e in inventory.machine_updates(vm.key)}


def catalogue_counts(inventory: UpdateInventory, keys: list[str]) -> dict[str, int]:
    entries = {e["RowKey"]: e for e in inventory.catalogue()}
    return {k: entries[k]["MachinesNeeding"] for k in keys if k in entries}


def test_an_installed_update_is_marked_not_needed_and_keeps_its_history(settings, inventory, loganalytics):
    vm, other = machine(), machine()
    a, b, c, d = kbs(4)
    day1 = outcome(win(a, "Security"), win(b, "Critical"), win(c, "Updates"))
    record(settings, vm, day1, DAY1, "run-1")
    record(settings, other, outcome(win(b, "Critical")), DAY1, "run-1")
    assert catalogue_counts(inventory, [f"KB{a}", f"KB{b}"]) == {f"KB{a}": 1, f"KB{b}": 2}

    # Day 2: A and B were installed, C is still missing, D appeared.
    summary = record(settings, vm, outcome(win(c, "Updates"), win(d, "Updates")), DAY2, "run-2")

    assert summary.compliant is True and summary.missing_total == 2
    state = gaps(inventory, vm)
    installed = state[f"KB{b}"]
    assert installed["State"] == "Not needed"
    assert installed["NoLongerNeededSince"] == DAY2
    assert (installed["FirstSeenMissing"], installed["LastSeenMissing"]) == (DAY1, DAY1)
    assert (state[f"KB{c}"]["State"], state[f"KB{c}"]["FirstSeenMissing"]) == ("Needed", DAY1)
    assert state[f"KB{d}"]["FirstSeenMissing"] == DAY2
    assert "NoLongerNeededSince" not in state[f"KB{c}"]
    assert catalogue_counts(inventory, [f"KB{a}", f"KB{b}", f"KB{d}"]) == {
        f"KB{a}": 0,
        f"KB{b}": 1,
        f"KB{d}": 1,
    }

    history = list(inventory.history(vm.key))
    assert [h["AssessedAt"] for h in history] == [DAY2, DAY1]  # newest first
    assert missing_keys(history[1]) == sorted([f"KB{a}", f"KB{b}", f"KB{c}"])
    assert inventory.compliance_on(vm.key, DAY1.date()) is False
    assert inventory.compliance_on(vm.key, DAY2.date()) is True
    assert inventory.compliance_on(vm.key, DAY2.date() + timedelta(days=30)) is True  # state persists
    assert inventory.compliance_on(vm.key, date(2025, 12, 31)) is None

    send_queued_rows(settings)
    rows = loganalytics.query(
        f"Update_CL | where Computer == '{vm.computer_name}' "
        f"and TimeGenerated == datetime({DAY2.isoformat()}) "
        "| project KBID, UpdateState | order by KBID asc"
    )
    assert rows == sorted(
        [
            {"KBID": a, "UpdateState": "Not needed"},
            {"KBID": b, "UpdateState": "Not needed"},
            {"KBID": c, "UpdateState": "Needed"},
            {"KBID": d, "UpdateState": "Needed"},
        ],
        key=lambda r: r["KBID"],
    )

    # Day 3: B is missing again (uninstalled): a new gap, no longer "no longer needed".
    record(settings, vm, outcome(win(b, "Critical"), win(c, "Updates")), DAY3, "run-3")
    reopened = gaps(inventory, vm)[f"KB{b}"]
    assert (reopened["State"], reopened["FirstSeenMissing"]) == ("Needed", DAY3)
    assert "NoLongerNeededSince" not in reopened
    assert inventory.compliance_on(vm.key, DAY3.date()) is False


def test_the_machine_entity_gets_assessment_state_and_keeps_discovery_fields(settings, inventory, azurite):
    vm = machine()
    machines = MachineInventory(TableServiceClient.from_connection_string(azurite.connection_string))
    machines.ensure()
    machines.record([vm], DAY1 - timedelta(hours=1))
    [kb] = kbs(1)

    record(settings, vm, outcome(win(kb, "Security"), reboot=True), DAY1, "run-1")

    entity = machines.get(vm.resource_id)
    assert entity is not None
    assert entity["LastDiscovered"] == DAY1 - timedelta(hours=1)  # merged, not replaced
    assert entity["PowerState"] == "running"
    assert (entity["LastAssessed"], entity["LastAssessmentRun"]) == (DAY1, "run-1")
    assert (entity["Compliant"], entity["RebootPending"], entity["Readiness"]) == (False, True, "Ready")
    assert (entity["MissingSecurity"], entity["MissingCritical"], entity["MissingTotal"]) == (1, 0, 1)


def test_a_failure_sets_readiness_and_keeps_the_last_good_assessment(settings, azurite, loganalytics):
    vm = machine()
    machines = MachineInventory(TableServiceClient.from_connection_string(azurite.connection_string))
    [kb] = kbs(1)
    record(settings, vm, outcome(win(kb, "Critical")), DAY1, "run-1")
    failure = AssessmentFailure(
        Readiness.FAILED, "VMAgentNotReady", "the VM agent is not ready", "Restart it."
    )

    summary = record_failure(settings, vm, failure, DAY2, "run-2")

    assert summary.readiness is Readiness.FAILED and summary.compliant is None
    entity = machines.get(vm.resource_id)
    assert entity is not None
    assert (entity["Readiness"], entity["LastErrorHint"]) == ("Failed", "Restart it.")
    assert entity["LastError"] == "VMAgentNotReady: the VM agent is not ready"
    assert (entity["LastAssessed"], entity["Compliant"], entity["MissingCritical"]) == (DAY1, False, 1)
    send_queued_rows(settings)
    rows = loganalytics.query(
        f"UpdateSummary_CL | where Computer == '{vm.computer_name}' | order by TimeGenerated asc "
        "| project Readiness, Compliant"
    )
    assert rows == [{"Readiness": "Ready", "Compliant": False}, {"Readiness": "Failed", "Compliant": None}]

    record(settings, vm, outcome(), DAY3, "run-3")  # a good assessment clears the error
    entity = machines.get(vm.resource_id)
    assert entity is not None
    assert (entity["Readiness"], entity["LastError"], entity["Compliant"]) == ("Ready", "", True)


def snapshot(service: TableServiceClient, vm: Machine, keys: list[str]) -> dict[str, Any]:
    def partition(table: str, key: str) -> list[dict[str, Any]]:
        client = service.get_table_client(table)
        return [dict(e) for e in client.query_entities("PartitionKey eq @p", parameters={"p": key})]

    catalogue = service.get_table_client(CATALOGUE_TABLE)
    return {
        "updates": partition(MACHINE_UPDATES_TABLE, vm.key),
        "machine": dict(service.get_table_client("Machines").get_entity(vm.subscription_id, vm.key)),
        "catalogue": [dict(catalogue.get_entity(vm.os_type.value, k)) for k in keys],
    }


def test_recording_the_same_assessment_twice_changes_nothing(settings, azurite, loganalytics):
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    vm = machine(OsType.LINUX)
    package = f"libtest{next(_names)}"
    record(settings, vm, outcome(pkg(package, "1.0", "Security"), pkg("bash", "5.1", "Other")), DAY1, "run-1")
    second = outcome(pkg(package, "1.1", "Security"))  # a newer version: the same gap; bash installed
    record(settings, vm, second, DAY2, "run-2")
    before = snapshot(service, vm, [package, "bash"])

    record(settings, vm, second, DAY2, "run-2")  # the retried activity

    assert snapshot(service, vm, [package, "bash"]) == before
    gap = {e["RowKey"]: e for e in before["updates"]}[package]
    assert (gap["FirstSeenMissing"], gap["PackageVersion"]) == (DAY1, "1.1")
    assert len([e for e in before["updates"] if e["RowKey"].startswith(HISTORY_PREFIX)]) == 2
    assert before["catalogue"][0]["MachinesNeeding"] == 1
    # The retried rows carry the same RecordIds (bash's Not needed row too): the outbox kept them once.
    send_queued_rows(settings)
    rows = loganalytics.query(
        f"Update_CL | where Computer == '{vm.computer_name}' "
        f"and TimeGenerated == datetime({DAY2.isoformat()}) "
        "| summarize Rows = count(), Records = dcount(RecordId) by UpdateState | order by UpdateState asc"
    )
    assert rows == [
        {"UpdateState": "Needed", "Rows": 1, "Records": 1},
        {"UpdateState": "Not needed", "Rows": 1, "Records": 1},
    ]


def test_an_arc_count_only_assessment_keeps_the_update_list_as_it_was(settings, inventory, azurite):
    vm = replace(
        machine(),
        kind=MachineKind.ARC_SERVER,
    )
    [kb] = kbs(1)
    record(settings, vm, outcome(win(kb, "Security")), DAY1, "run-1")
    counts = AssessmentOutcome(
        status="Succeeded",
        activity_id="arc",
        started_at=None,
        reboot_pending=False,
        critical_and_security_count=0,
        other_count=2,
        patches=None,
        counts_by_classification={"Updates": 2},
    )

    summary = record(settings, vm, counts, DAY2, "run-2")

    assert (summary.counts_only, summary.compliant, summary.missing_total) == (True, True, 2)
    assert gaps(inventory, vm)[f"KB{kb}"]["State"] == "Needed"  # no list: nothing is closed
    assert inventory.compliance_on(vm.key, DAY2.date()) is True


def test_a_truncated_list_opens_what_it_lists_and_closes_nothing(settings, inventory, loganalytics):
    vm = machine()
    a, b, c = kbs(3)
    whole = outcome(win(a, "Security"), win(b, "Critical"), win(c, "Updates"))
    record(settings, vm, whole, DAY1, "r1")

    # The agent cut the list to A: B and C were not reported, so nothing says they were installed.
    cut = replace(outcome(win(a, "Security")), truncated=True, critical_and_security_count=2, other_count=1)
    record(settings, vm, cut, DAY2, "r2")
    found = gaps(inventory, vm)
    assert {key: found[key]["State"] for key in found} == {
        f"KB{a}": "Needed", f"KB{b}": "Needed", f"KB{c}": "Needed"
    }
    assert found[f"KB{b}"]["FirstSeenMissing"] == DAY1  # the gap is the same one, still open

    # A whole list that names only A again closes B and C.
    record(settings, vm, outcome(win(a, "Security")), DAY3, "r3")
    found = gaps(inventory, vm)
    assert found[f"KB{b}"]["State"] == found[f"KB{c}"]["State"] == "Not needed"


def test_an_entry_carried_in_another_row_is_applied_once_with_its_journal(settings, inventory, loganalytics):
    """A deployment's pre-scan keeps its entry in the machine's row, not in the journal table
    (shared.deployments.steps): the batch's end hands it to the apply, which counts it once."""
    vm = machine()
    (kb,) = kbs(1)
    journal = journal_key(f"carried-{vm.key}", 0)
    _, entry = record_scan(settings, vm, outcome(win(kb, "Security")), DAY1, "run-carried")
    row = carried_columns("Journal_prescan_", entry.to_json())  # what the step merges into its row
    assert row is not None
    text = carried_text(row, "Journal_prescan_")
    assert text is not None
    carried = [JournalEntry.from_json(text)]

    apply_journal(settings, [journal], DAY1, carried)
    apply_journal(settings, [journal], DAY1, carried)  # the batch's activity, redelivered

    assert catalogue_counts(inventory, [f"KB{kb}"]) == {f"KB{kb}": 1}
    send_queued_rows(settings)
    rows = loganalytics.query(f"UpdateSummary_CL | where Computer == '{vm.computer_name}' | count")
    assert rows == [{"Count": 1}]
