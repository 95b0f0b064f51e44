"""``UpdateRunMachine_CL`` rows: one per machine of a run, whatever its result, with the declared columns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.deployments.results import MachineResultStatus, run_machine_row
from shared.deployments.rollout import REASON_ERROR_BUDGET
from shared.deployments.runs_table import MachineOutcomeRecord
from shared.log_tables import UPDATE_RUN_MACHINE, check_rows
from shared.model.machines import OsType, machine_key

SUB = "11111111-1111-4111-8111-111111111111"
VM = f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/web-01"
ARC = f"/subscriptions/{SUB}/resourceGroups/rg-dc/providers/Microsoft.HybridCompute/machines/dc-01"
STARTED = datetime(2027, 1, 12, 2, 0, tzinfo=UTC)
FINISHED = STARTED + timedelta(minutes=35)


def test_a_finished_machine_row_carries_its_result_counts_and_times():
    outcome = MachineOutcomeRecord(
        MachineResultStatus.PARTIALLY_SUCCEEDED, "install: 1 failed", installed=3, failed=1, pending=0,
        excluded=2, not_selected=4, reboot_status="Completed", error_code="PatchFailed",
        error_message="openssl: dpkg returned 1",
    )  # fmt: skip
    row = run_machine_row("run-1", "prod-linux", VM, "web-01", OsType.LINUX, outcome, STARTED, FINISHED)
    check_rows(UPDATE_RUN_MACHINE, [row])
    assert set(row) == set(UPDATE_RUN_MACHINE.column_names())
    expected = {
        "TimeGenerated": FINISHED, "Computer": "web-01", "ComputerEnvironment": "Azure", "OSType": "Linux",
        "ResourceId": VM, "SubscriptionId": SUB, "SourceComputerId": machine_key(VM),
        "UpdateRunName": "prod-linux", "UpdateRunId": "run-1", "Status": "partially succeeded",
        "Reason": "install: 1 failed", "StartTime": STARTED, "EndTime": FINISHED, "Installed": 3,
        "FailedUpdates": 1, "Pending": 0, "Excluded": 2, "RebootStatus": "Completed",
        "ErrorCode": "PatchFailed", "ErrorMessage": "openssl: dpkg returned 1", "Release": "",
    }  # fmt: skip
    assert {name: row[name] for name in expected} == expected


def test_a_machine_row_names_the_deployments_release():
    outcome = MachineOutcomeRecord(MachineResultStatus.SUCCEEDED, installed=2)
    row = run_machine_row("run-1", "web-production", VM, "web-01", OsType.LINUX, outcome, STARTED, FINISHED,
                          release="web-2026-12")
    check_rows(UPDATE_RUN_MACHINE, [row])
    assert row["Release"] == "web-2026-12"


def test_a_machine_that_never_started_has_a_row_with_its_reason_and_no_start_time():
    outcome = MachineOutcomeRecord(MachineResultStatus.SKIPPED, REASON_ERROR_BUDGET)
    row = run_machine_row("run-1", "prod-linux", ARC, "dc-01", OsType.WINDOWS, outcome, None, FINISHED)
    assert (row["Status"], row["Reason"]) == ("skipped", REASON_ERROR_BUDGET)
    assert row["StartTime"] is None and row["EndTime"] == FINISHED
    assert row["ComputerEnvironment"] == "Non-Azure"  # an Arc-enabled server, from its resource id
    assert (row["Installed"], row["FailedUpdates"], row["Pending"], row["Excluded"]) == (0, 0, 0, 0)


def test_a_target_discovery_did_not_find_has_no_operating_system():
    outcome = MachineOutcomeRecord(MachineResultStatus.SKIPPED, "machine not found")
    row = run_machine_row("run-1", "prod-linux", VM, "web-01", None, outcome, None, FINISHED)
    check_rows(UPDATE_RUN_MACHINE, [row])
    assert row["OSType"] is None and row["Status"] == "skipped"


def test_record_id_depends_on_the_run_and_the_machine_only():
    done = MachineOutcomeRecord(MachineResultStatus.SUCCEEDED, installed=2)
    retried = MachineOutcomeRecord(MachineResultStatus.SUCCEEDED, installed=2)
    first = run_machine_row("run-1", "prod-linux", VM, "web-01", OsType.LINUX, done, STARTED, FINISHED)
    again = run_machine_row("run-1", "prod-linux", VM.upper(), "web-01", OsType.LINUX, retried, STARTED,
                            FINISHED + timedelta(seconds=5))  # fmt: skip
    other_run = run_machine_row("run-2", "prod-linux", VM, "web-01", OsType.LINUX, done, STARTED, FINISHED)
    other_machine = run_machine_row("run-1", "prod-linux", ARC, "dc-01", OsType.LINUX, done, None, FINISHED)
    assert first["RecordId"] == again["RecordId"]
    assert len({first["RecordId"], other_run["RecordId"], other_machine["RecordId"]}) == 3


def test_a_long_error_message_is_cut_as_the_run_store_keeps_it():
    outcome = MachineOutcomeRecord(MachineResultStatus.FAILED, error_code="X", error_message="e" * 9000)
    row = run_machine_row("run-1", "prod-linux", VM, "web-01", OsType.LINUX, outcome, STARTED, FINISHED)
    assert len(row["ErrorMessage"]) == 4000
