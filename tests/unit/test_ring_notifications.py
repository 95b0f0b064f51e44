"""Ring-run notifications' decisions: which runs notify, Started/Finished/Failed and the Failed rule, the
data each carries (checked against the documented schema by Notification itself), the failed updates."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.azure.tables import split_property
from shared.deployments.definition import validate_definition
from shared.deployments.results import MachineResultStatus
from shared.deployments.ring_notifications import (
    ended_notification,
    failed_updates_of,
    failure_reason,
    ring_scope,
    started_notification,
)
from shared.deployments.rollout import REASON_ERROR_BUDGET, REASON_WINDOW_CLOSING
from shared.deployments.runs_table import RunRecord, RunState
from shared.governance.notifications import MAX_LISTED_UPDATES, SCHEMAS, EventType, schema_problems

START = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
END = START + timedelta(hours=1)
VM = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-01"


def definition(targets: dict[str, Any], **more: Any):
    return validate_definition({
        "name": "web-test-ring", "operatingSystem": "Linux", "targets": targets,
        "classifications": ["Critical and security updates"],
        "schedule": {"startTime": "2026-03-10T02:00:00", "timeZone": "UTC"}, "maintenanceWindowMinutes": 120,
        **more,
    })  # fmt: skip


RING = {"categories": [{"category": "web", "ring": "test"}]}


def run(targets: dict[str, Any] = RING, state: RunState = RunState.RUNNING, **fields: Any) -> RunRecord:
    counts = {s.value: 0 for s in MachineResultStatus} | fields.pop("counts", {})
    return RunRecord(run_id="deploy-web-test-ring-1", deployment_name="web-test-ring", trigger="schedule",
                     state=state, definition=definition(targets), created=START, window_start=START,
                     window_minutes=120, targets=sum(counts.values()) or 3, counts=counts, **fields)


def test_a_run_with_no_category_target_notifies_nothing():
    plain = run({"machines": [VM]}, RunState.COMPLETED, counts={"failed": 1}, finished=END)
    assert ring_scope(plain.definition) is None
    assert started_notification(replace(plain, state=RunState.RUNNING), START) is None
    assert ended_notification(plain, END) is None
    assert ended_notification(replace(plain, state=RunState.FAILED, error="refused"), END) is None


@pytest.mark.parametrize(("targets", "category", "ring", "rings"), [
    (RING, "web", "test", ["web/test"]),
    ({"categories": [{"category": "web"}]}, "web", None, ["web"]),  # the whole category: every ring
    ({"categories": [{"category": "web", "ring": "test"}, {"category": "web", "ring": "pilot"}]},
     "web", None, ["web/test", "web/pilot"]),
    ({"categories": [{"category": "web", "ring": "test"}, {"category": "db", "ring": "test"}],
      "machines": [VM]}, None, None, ["web/test", "db/test"]),
])  # fmt: skip
def test_a_run_with_a_category_target_notifies_with_its_rings(targets, category, ring, rings):
    started = started_notification(run(targets), START)
    assert started is not None and started.type is EventType.RING_RUN_STARTED
    assert started.data.get("category") == category and started.data.get("ring") == ring
    assert started.data["rings"] == rings


def test_started_when_resolved_with_the_documented_data_and_key():
    started = started_notification(run(counts={}), START)
    assert started is not None
    assert started.subject == "/deployments/web-test-ring/runs/deploy-web-test-ring-1"
    assert started.dedup_key == "RingRun.Started|deploy-web-test-ring-1"
    assert started.data == {"deployment": "web-test-ring", "runId": "deploy-web-test-ring-1", "machines": 3,
                            "startedAt": "2026-03-10T02:00:00Z", "category": "web", "ring": "test",
                            "rings": ["web/test"]}
    assert set(started.data) <= {*SCHEMAS[EventType.RING_RUN_STARTED].required,
                                 *SCHEMAS[EventType.RING_RUN_STARTED].optional}
    assert started_notification(run(state=RunState.QUEUED), START) is None  # not resolved yet


def test_a_run_that_could_not_start_is_failed_not_started():
    refused = run(state=RunState.FAILED, error="release: not approved for web", finished=START)
    for notification in (started_notification(refused, START), ended_notification(refused, START)):
        assert notification is not None and notification.type is EventType.RING_RUN_FAILED
        assert notification.dedup_key == "RingRun.Failed|deploy-web-test-ring-1"  # either raise is the same
        assert notification.data["reason"] == "release: not approved for web"
        assert notification.data["status"] == "failed"


def test_finished_when_no_machine_failed_with_counts_by_result():
    done = run(state=RunState.COMPLETED, finished=END, stop_reason=REASON_WINDOW_CLOSING,
               counts={"succeeded": 2, "not reachable": 1, "skipped": 1})
    assert failure_reason(done) is None  # out of window and unreachable machines did not fail an install
    finished = ended_notification(done, END + timedelta(minutes=5))
    assert finished is not None and finished.type is EventType.RING_RUN_FINISHED
    assert finished.dedup_key == "RingRun.Finished|deploy-web-test-ring-1"
    data = finished.data
    assert (data["machines"], data["succeeded"], data["failed"]) == (4, 2, 0)
    assert data["finishedAt"] == "2026-03-10T03:00:00Z"  # when the run row says it ended, retry or not
    assert data["results"]["succeeded"] == 2 and data["results"]["not reachable"] == 1
    assert set(data["results"]) == {s.value for s in MachineResultStatus}
    assert data["status"] == "completed" and "failedUpdates" not in data


@pytest.mark.parametrize(("fields", "reason"), [
    ({"counts": {"succeeded": 2, "failed": 1}}, "1 of 3 machines failed"),
    ({"counts": {"succeeded": 2, "partially succeeded": 1}}, "1 of 3 machines failed"),
    ({"counts": {"failed": 2, "skipped": 4}, "stop_reason": REASON_ERROR_BUDGET},
     f"stopped: {REASON_ERROR_BUDGET} (no further machine was started); 2 of 6 machines failed"),
])  # fmt: skip
def test_failed_when_a_machine_failed_or_the_error_budget_stopped_the_run(fields, reason):
    ended = run(state=RunState.COMPLETED, finished=END, **fields)
    assert failure_reason(ended) == reason
    failed = ended_notification(ended, END, [{"osType": "Linux", "key": "sudo=1.9.9-1ubuntu2.4",
                                              "machines": 1}])
    assert failed is not None and failed.type is EventType.RING_RUN_FAILED
    assert failed.data["reason"] == reason and failed.data["failedAt"] == "2026-03-10T03:00:00Z"
    assert failed.data["failedUpdates"] == [
        {"osType": "Linux", "key": "sudo=1.9.9-1ubuntu2.4", "machines": 1}]
    assert failed.data["failed"] == ended.counts["failed"] + ended.counts["partially succeeded"]


def test_a_cancelled_run_is_finished_with_its_status_and_an_open_run_sends_nothing_yet():
    cancelled = ended_notification(run(state=RunState.CANCELLED, finished=END,
                                       counts={"succeeded": 1, "cancelled": 2}), END)
    assert cancelled is not None and cancelled.type is EventType.RING_RUN_FINISHED
    assert cancelled.data["status"] == "cancelled"
    assert ended_notification(run(state=RunState.RUNNING), END) is None
    assert ended_notification(run(state=RunState.MISSED), END) is None


def progress(os_type: str, status: str, **columns: str) -> dict[str, Any]:
    return {"OSType": os_type, "InstallationStatus": status, **columns}


def machine_row(*steps: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"State": "partially succeeded"}
    for n, rows in enumerate(steps, start=1):
        row |= split_property(f"Progress_install{n}_", json.dumps(rows))
    return row


def test_the_failed_updates_come_from_the_install_rows_most_failed_first():
    sudo = {"PackageName": "sudo", "PackageVersion": "1.9.9-1ubuntu2.4"}
    rows = [
        machine_row([progress("Linux", "failed", **sudo),
                     progress("Linux", "succeeded", PackageName="openssl", PackageVersion="3.0.2")]),
        machine_row([progress("Linux", "failed", **sudo)], [progress("Linux", "failed", **sudo)]),  # once
        machine_row([progress("Windows", "failed", KBID="5034441"),
                     progress("Linux", "failed", PackageName="zlib1g")]),  # no version: the name
        {"State": "failed"},  # failed before installing: no rows
    ]
    assert failed_updates_of(rows) == [
        {"osType": "Linux", "key": "sudo=1.9.9-1ubuntu2.4", "machines": 2},
        {"osType": "Linux", "key": "zlib1g", "machines": 1},
        {"osType": "Windows", "key": "KB5034441", "machines": 1},
    ]
    many = [machine_row([progress("Windows", "failed", KBID=str(5000000 + n))]) for n in range(80)]
    assert len(failed_updates_of(many)) == MAX_LISTED_UPDATES


def test_the_schema_names_bad_counts_and_failed_updates():
    data = {"deployment": "d", "runId": "r", "reason": "x", "failedAt": "2026-03-10T03:00:00Z"}
    assert schema_problems(EventType.RING_RUN_FAILED, {**data, "results": {"succeeded": 2}}) == []
    found = schema_problems(EventType.RING_RUN_FAILED, {
        **data, "results": {"succeeded": -1}, "failedUpdates": [{"osType": "Linux", "key": "sudo"}],
        "rings": ["web/test", ""]})  # fmt: skip
    assert [p.split(" must be ")[0] for p in found] == ["data.results", "data.failedUpdates", "data.rings"]
    many = [{"osType": "Windows", "key": f"KB{n}", "machines": 1} for n in range(MAX_LISTED_UPDATES + 1)]
    assert schema_problems(EventType.RING_RUN_FINISHED, {
        "deployment": "d", "runId": "r", "machines": 1, "succeeded": 1, "failed": 0,
        "finishedAt": "2026-03-10T03:00:00Z", "failedUpdates": many}) == [
        f"data.failedUpdates must be a list of at most {MAX_LISTED_UPDATES} {{osType, key, machines}} "
        f"(got {many!r:.80})"]
