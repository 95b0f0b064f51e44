"""Notifications without Azure: the event types, each type's data schema, the identity a dedup key gives
(CloudEvent id and outbox row), the CloudEvent on the wire, and the webhook signature."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from shared.azure.event_grid import (
    MAX_EVENT_BYTES,
    SIGNATURE_HEADER,
    cloud_event,
    event_bytes,
    signature,
    signature_matches,
    structured_json,
)
from shared.governance.notifications import (
    MAX_LISTED_MACHINES,
    SCHEMAS,
    SOURCE,
    EventType,
    Notification,
    NotificationError,
    _row_key,
    event_of,
)

AT = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
PATCHES = [{"osType": "Linux", "key": "openssl=3.0.2-0ubuntu1.12"}]

# One valid notification of each type, as the parts that raise them build it (the module docstring's schema).
EXAMPLES: dict[EventType, tuple[str, dict[str, Any], str]] = {
    EventType.UPDATE_FIRST_SEEN: (
        "/patches/Windows/KB5034441",
        {"osType": "Windows", "key": "KB5034441", "classification": "Security Updates", "machinesNeeding": 42,
         "firstSeen": AT, "title": "2024-01 Cumulative Update", "kbId": "5034441"},
        "Update.FirstSeen|Windows|KB5034441",
    ),
    EventType.APPROVAL_REQUESTED: (
        "/approvals/req-7",
        {"requestId": "req-7", "category": "web", "patches": PATCHES, "requestedBy": "op@contoso.com",
         "justification": "passed on the test ring", "requestedAt": AT},
        "Approval.Requested|req-7",
    ),
    EventType.APPROVAL_GRANTED: (
        "/approvals/req-7",
        {"requestId": "req-7", "category": "web", "patches": PATCHES, "requestedBy": "op@contoso.com",
         "decidedBy": "cab@contoso.com", "justification": "CAB 2026-03-02", "decidedAt": AT},
        f"Approval.Granted|req-7|{AT.isoformat()}",
    ),
    EventType.APPROVAL_REJECTED: (
        "/approvals/req-8",
        {"requestId": "req-8", "category": "web", "patches": PATCHES, "decidedBy": "cab@contoso.com",
         "justification": "breaks the load balancer probe", "decidedAt": AT},
        f"Approval.Rejected|req-8|{AT.isoformat()}",
    ),
    EventType.APPROVAL_DEFERRED: (
        "/approvals/req-9",
        {"requestId": "req-9", "category": "web", "patches": PATCHES, "decidedBy": "cab@contoso.com",
         "justification": "after the sales freeze", "decidedAt": AT, "deferUntil": date(2026, 4, 1)},
        f"Approval.Deferred|req-9|{AT.isoformat()}",
    ),
    EventType.APPROVAL_REVOKED: (
        "/approvals/req-7",
        {"requestId": "req-7", "category": "web", "patches": PATCHES, "requestedBy": "op@contoso.com",
         "decidedBy": "cab@contoso.com", "justification": "regression INC0042 on the test ring",
         "decidedAt": AT},
        f"Approval.Revoked|req-7|{AT.isoformat()}",
    ),
    EventType.RING_RUN_STARTED: (
        "/deployments/web-monthly/runs/run-1",
        {"deployment": "web-monthly", "runId": "run-1", "machines": 12, "startedAt": AT, "category": "web",
         "ring": "test", "release": "web-2026-03"},
        "RingRun.Started|run-1",
    ),
    EventType.RING_RUN_FINISHED: (
        "/deployments/web-monthly/runs/run-1",
        {"deployment": "web-monthly", "runId": "run-1", "machines": 12, "succeeded": 11, "failed": 1,
         "finishedAt": AT, "status": "completed with failures"},
        "RingRun.Finished|run-1",
    ),
    EventType.RING_RUN_FAILED: (
        "/deployments/web-monthly/runs/run-2",
        {"deployment": "web-monthly", "runId": "run-2", "reason": "maintenance window closed",
         "failedAt": AT},
        "RingRun.Failed|run-2",
    ),
    EventType.DEADLINE_APPROACHING: (
        "/categories/web/patches/Windows/KB5034441",
        {"category": "web", "osType": "Windows", "key": "KB5034441", "classification": "Security Updates",
         "deadline": AT + timedelta(days=2), "daysLeft": 2, "machinesMissing": 3,
         "machines": ["vm-1", "vm-2", "vm-3"]},
        "Deadline.Approaching|web|Windows|KB5034441|2026-03-04",
    ),
    EventType.MACHINE_ROLLED_BACK: (
        "/deployments/web-test/runs/run-3/machines/web-01",
        {"runId": "run-3", "deployment": "web-test",
         "machine": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web-01",
         "computer": "web-01",
         "reason": "app-probe failed after the install: exit code 1", "restorePoint": AT,
         "rolledBackAt": AT + timedelta(minutes=20), "trigger": "health", "category": "web", "ring": "test",
         "patches": [{"osType": "Linux", "key": "openssl=3.0.2-0ubuntu1.15"}]},
        "Machine.RolledBack|run-3|web-01",
    ),
}  # fmt: skip


def example(event_type: EventType, **changes: Any) -> Notification:
    subject, data, dedup_key = EXAMPLES[event_type]
    return Notification(event_type, subject, {**data, **changes}, dedup_key)


def test_the_event_types_are_the_designs():
    assert {t.value for t in EventType} == {
        "PatchManagement.Update.FirstSeen", "PatchManagement.Approval.Requested",
        "PatchManagement.Approval.Granted", "PatchManagement.Approval.Rejected",
        "PatchManagement.Approval.Deferred", "PatchManagement.Approval.Revoked",
        "PatchManagement.RingRun.Started",
        "PatchManagement.RingRun.Finished", "PatchManagement.RingRun.Failed",
        "PatchManagement.Deadline.Approaching", "PatchManagement.Machine.RolledBack",
    }  # fmt: skip
    assert set(SCHEMAS) == set(EventType) == set(EXAMPLES)


@pytest.mark.parametrize("event_type", list(EventType))
def test_each_type_accepts_its_schema_and_sends_times_as_iso_text(event_type: EventType):
    notification = example(event_type)
    assert notification.type is event_type
    schema = SCHEMAS[event_type]
    assert set(schema.required) <= set(notification.data) <= set(schema.required) | set(schema.optional)
    json.dumps(notification.data)  # JSON as it is: datetimes became text
    for name, kind in {**schema.required, **schema.optional}.items():
        if kind == "time" and name in notification.data:
            value = notification.data[name]
            assert isinstance(value, str) and datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.mark.parametrize("event_type", list(EventType))
def test_each_type_names_every_missing_required_field(event_type: EventType):
    subject, data, dedup_key = EXAMPLES[event_type]
    required = set(SCHEMAS[event_type].required)
    with pytest.raises(NotificationError) as raised:
        Notification(event_type, subject, {k: v for k, v in data.items() if k not in required}, dedup_key)
    assert sorted(raised.value.problems) == sorted(
        f"data.{name} is required for {event_type.value}" for name in required)


def problems(event_type: EventType, **changes: Any) -> list[str]:
    """What NotificationError names for ``event_type``'s example with ``changes``."""
    with pytest.raises(NotificationError) as raised:
        example(event_type, **changes)
    return raised.value.problems


def starts(found: list[str], prefix: str) -> bool:
    return any(problem.startswith(prefix) for problem in found)


def test_unknown_fields_and_wrong_types_are_named_all_at_once():
    found = problems(EventType.RING_RUN_FINISHED, machines=-1, succeeded="11", finishedAt="yesterday",
                     colour="red")
    assert starts(found, "data.colour is not a field of PatchManagement.RingRun.Finished")
    assert starts(found, "data.machines must be a whole number >= 0")
    assert starts(found, "data.succeeded must be a whole number >= 0")
    assert starts(found, "data.finishedAt must be an ISO 8601 time")
    assert len(found) == 4


def test_the_fields_of_one_type_are_not_accepted_by_another():
    assert problems(EventType.APPROVAL_DEFERRED, deferUntil=None) == [
        "data.deferUntil is required for PatchManagement.Approval.Deferred"]
    assert starts(problems(EventType.RING_RUN_STARTED, reason="why"),
                  "data.reason is not a field of PatchManagement.RingRun.Started")


def test_patches_and_machine_lists_are_checked():
    listed = "data.patches must be a non-empty list of {osType, key}"
    assert starts(problems(EventType.APPROVAL_REQUESTED, patches=[{"os": "Linux", "key": "x"}]), listed)
    assert starts(problems(EventType.APPROVAL_GRANTED, patches=[]), listed)
    too_many = [f"vm-{n}" for n in range(MAX_LISTED_MACHINES + 1)]
    assert starts(problems(EventType.DEADLINE_APPROACHING, machines=too_many),
                  f"data.machines must be a list of at most {MAX_LISTED_MACHINES} ids")


def test_subject_dedup_key_type_time_zone_and_size_are_checked():
    subject, data, _ = EXAMPLES[EventType.RING_RUN_FAILED]
    with pytest.raises(NotificationError) as raised:
        Notification(EventType.RING_RUN_FAILED, "deployments/x", data, "")
    assert raised.value.problems == ["subject 'deployments/x' must be a path starting with '/'",
                                     "dedup_key must be 1 to 1024 characters"]
    with pytest.raises(NotificationError) as raised:
        Notification("PatchManagement.Other", subject, data, "k")  # type: ignore[arg-type]
    assert raised.value.problems[0].startswith("type 'PatchManagement.Other' is not one of ")
    assert problems(EventType.RING_RUN_FAILED, failedAt=datetime(2026, 3, 2, 9, 30)) == [
        "datetime datetime.datetime(2026, 3, 2, 9, 30) has no time zone"]
    assert starts(problems(EventType.RING_RUN_FAILED, reason="x" * MAX_EVENT_BYTES), "data is ")
    # A type given as its text is taken.
    text_type: Any = "PatchManagement.RingRun.Failed"
    assert Notification(text_type, subject, data, "k").type is EventType.RING_RUN_FAILED


def test_a_dedup_key_gives_one_event_id_and_one_outbox_row():
    first, again = example(EventType.RING_RUN_STARTED), example(EventType.RING_RUN_STARTED, machines=13)
    other = example(EventType.RING_RUN_FINISHED)
    assert first.event_id == again.event_id and _row_key(first.dedup_key) == _row_key(again.dedup_key)
    assert first.event_id != other.event_id and _row_key(first.dedup_key) != _row_key(other.dedup_key)
    assert str(uuid.UUID(first.event_id)) == first.event_id
    # Any text may be a dedup key; the row key holds none of the characters Table keys refuse.
    awkward = "Deadline.Approaching|web/frontends|Windows|KB1#?\\"
    assert not set(_row_key(awkward)) & set("/\\#?")


def test_the_cloud_event_carries_the_required_attributes_and_the_data():
    notification = example(EventType.APPROVAL_REQUESTED)
    wire = structured_json(event_of(notification, AT))
    assert wire == {
        "specversion": "1.0", "id": notification.event_id, "source": SOURCE,
        "type": "PatchManagement.Approval.Requested", "time": "2026-03-02T09:30:00.000Z",
        "subject": "/approvals/req-7", "datacontenttype": "application/json", "data": notification.data,
    }  # fmt: skip
    assert notification.data["requestedAt"] == "2026-03-02T09:30:00Z"
    assert json.loads(event_bytes(event_of(notification, AT))) == wire


def test_the_signature_follows_githubs_convention():
    # The example of GitHub's "Validating webhook deliveries": this secret and payload give this signature.
    secret, body = "It's a Secret to Everybody", b"Hello, World!"
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signature(secret, body) == expected
    assert SIGNATURE_HEADER == "X-Signature-256"
    assert signature_matches(secret, body, expected)
    assert not signature_matches(secret, body + b" ", expected)
    assert not signature_matches("another secret", body, expected)
    assert not signature_matches(secret, body, None)
    assert not signature_matches(secret, body, expected.removeprefix("sha256="))


def test_a_signature_covers_the_exact_bytes_sent():
    event = cloud_event("id-1", SOURCE, EventType.RING_RUN_FAILED.value, "/deployments/d/runs/r",
                        {"reason": "é"}, AT)
    body = event_bytes(event)
    assert "é".encode() in body  # UTF-8 as sent, not \\u escapes that a receiver would not see
    assert signature_matches("s", body, signature("s", body))


def test_an_optional_text_left_empty_counts_as_absent_but_a_required_one_does_not():
    assert example(EventType.UPDATE_FIRST_SEEN, title="", product=None).data["title"] == ""
    assert starts(problems(EventType.UPDATE_FIRST_SEEN, classification=""),
                  "data.classification must be a non-empty string")
