"""Notifications through Azurite, the Event Grid topic stand-in and the webhook receiver, with the real
``EventGridPublisherClient``: published once per dedup key, a refused send retried by the timer, the
webhook's signature verified by a receiver that knows only the convention."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.messaging import CloudEvent
from azure.data.tables import TableServiceClient

from functions import notifications as notification_timer
from local.azurite import Azurite
from local.eventgrid import EventGridTopicStandIn, WebhookReceiver
from local.eventgrid.topic import API_VERSION
from local.tls import LocalTls
from shared.azure.event_grid import PUBLISH_RETRIES, SIGNATURE_HEADER, SendRefused, SendUnknown
from shared.governance.notifications import (
    CLAIM_TIMEOUT,
    OUTBOX_TABLE,
    PENDING,
    RECORDED,
    REJECTED,
    SENDING,
    SENT,
    EventType,
    Notification,
    NotificationOutbox,
    notification_outbox,
    notify,
)
from shared.settings import Settings, load_settings

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SECRET = "webhook-test-secret"


@pytest.fixture
def topic(tls: LocalTls) -> Iterator[EventGridTopicStandIn]:
    with EventGridTopicStandIn(tls) as running:
        yield running


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as running:
        yield running


def _values(azurite: Azurite, **values: str) -> dict[str, str]:
    return {
        "DURABLE_TASK_HUB": "NotifyTests", "AZURE_AUTH_MODE": "emulator",
        "TARGET_SUBSCRIPTION_IDS": "00000000-0000-0000-0000-0000000000cc", "ARM_ENDPOINT": "https://127.0.0.1:9",
        "STORAGE_CONNECTION_STRING": azurite.connection_string,
        "LOGS_INGESTION_ENDPOINT": "https://127.0.0.1:9", "LOGS_DCR_IMMUTABLE_ID": "dcr-" + "c" * 32,
        "LOG_ANALYTICS_WORKSPACE_ID": "00000000-0000-0000-0000-0000000000cc",
        "LOGS_QUERY_ENDPOINT": "https://127.0.0.1:9/v1", **values,
    }  # fmt: skip


def _settings(azurite: Azurite, **values: str) -> Settings:
    return load_settings(_values(azurite, **values))


@pytest.fixture
def clean_outbox(azurite: Azurite, tls: LocalTls, monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK (requests) trusts the stand-ins' local CA; the table is shared by the session's Azurite.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    table = TableServiceClient.from_connection_string(azurite.connection_string).create_table_if_not_exists(
        OUTBOX_TABLE)
    for entity in table.list_entities(select=["PartitionKey", "RowKey"]):
        table.delete_entity(entity["PartitionKey"], entity["RowKey"])


@pytest.fixture
def settings(azurite: Azurite, topic: EventGridTopicStandIn, receiver: WebhookReceiver,
             clean_outbox: None, monkeypatch: pytest.MonkeyPatch) -> Settings:
    values = _values(azurite, EVENT_GRID_TOPIC_ENDPOINT=topic.endpoint, NOTIFICATION_WEBHOOK_URL=receiver.url,
                     NOTIFICATION_WEBHOOK_SECRET=SECRET)
    for name, value in values.items():  # the timer reads its settings from the environment
        monkeypatch.setenv(name, value)
    return load_settings(values)


def approval_requested(request_id: str = "req-1") -> Notification:
    return Notification(
        EventType.APPROVAL_REQUESTED, f"/approvals/{request_id}",
        {"requestId": request_id, "category": "web-frontends",
         "patches": [{"osType": "Windows", "key": "KB5034441"}], "requestedBy": "operator@contoso.com",
         "justification": "passed on the test ring", "requestedAt": NOW},
        f"Approval.Requested|{request_id}",
    )  # fmt: skip


def test_notify_twice_publishes_once_with_the_real_client(settings: Settings, topic: EventGridTopicStandIn,
                                                          receiver: WebhookReceiver) -> None:
    notification = approval_requested()
    assert notify(settings, notification, at=NOW) is True
    assert notify(settings, notification, at=NOW + timedelta(minutes=1)) is False

    assert len(topic.events) == 1
    event = topic.events[0]
    assert event["specversion"] == "1.0"
    assert event["type"] == "PatchManagement.Approval.Requested"
    assert event["source"] == "/patch-management"
    assert event["subject"] == "/approvals/req-1"
    assert event["id"] == notification.event_id
    assert event["data"]["patches"] == [{"osType": "Windows", "key": "KB5034441"}]
    assert event["data"]["requestedAt"] == "2026-03-02T09:00:00Z"
    # What the SDK sent: a CloudEvents batch, signed in with a bearer token (the topic has local auth off).
    headers = {k.lower(): v for k, v in topic.request_headers[0].items()}
    assert headers["content-type"].startswith("application/cloudevents-batch+json")
    assert headers["authorization"].startswith("Bearer ")

    assert len(receiver.deliveries) == 1 and receiver.bad_signatures == 0
    assert receiver.deliveries[0]["event"] == event
    record = notification_outbox(settings).find(notification.dedup_key)
    assert record is not None and record["State"] == SENT and record["Attempts"] == 1


def test_a_refused_send_waits_and_the_timer_sends_it_once(settings: Settings, topic: EventGridTopicStandIn,
                                                          receiver: WebhookReceiver) -> None:
    topic.refuse_next(calls=PUBLISH_RETRIES + 1, status=503)  # every try of azure-core's retry policy
    notification = approval_requested("req-2")
    assert notify(settings, notification, at=NOW) is True
    assert topic.events == [] and topic.counters.refused_requests == PUBLISH_RETRIES + 1
    # The webhook took it; only Event Grid waits, and the webhook is not sent twice.
    assert len(receiver.deliveries) == 1
    record = notification_outbox(settings).find(notification.dedup_key)
    assert record is not None and record["State"] == PENDING and "503" in record["LastError"]

    report = notification_timer.send_waiting("timer-test", NOW + timedelta(minutes=5))
    assert report.to_json() == {"sent": 1, "left": 0, "rejected": 0, "errors": []}
    assert len(topic.events) == 1 and topic.events[0]["id"] == notification.event_id
    assert len(receiver.deliveries) == 1
    again = notification_timer.send_waiting("timer-test-2", NOW + timedelta(minutes=10))
    assert again.sent == 0 and again.left == 0
    assert len(topic.events) == 1
    record = notification_outbox(settings).find(notification.dedup_key)
    assert record is not None and record["State"] == SENT


def test_a_send_whose_answer_was_lost_is_sent_again_only_after_the_claim_timeout(
        settings: Settings, topic: EventGridTopicStandIn) -> None:
    outbox = notification_outbox(settings)
    notification = approval_requested("req-3")
    assert outbox.record(notification, NOW)
    # A sender claimed it and died before marking it sent.
    outbox.table.update_entity({"PartitionKey": "notification", "RowKey": "n|" + _digest(notification),
                                "State": "sending", "Claimed": NOW})
    assert outbox.send_pending("other", NOW + CLAIM_TIMEOUT - timedelta(seconds=1)).left == 1
    assert topic.events == []
    assert outbox.send_pending("other", NOW + CLAIM_TIMEOUT).sent == 1
    assert [e["id"] for e in topic.events] == [notification.event_id]  # the same id: subscribers dedupe


def test_without_an_endpoint_notify_only_records(azurite: Azurite, clean_outbox: None) -> None:
    settings = _settings(azurite)
    notification = approval_requested("req-4")
    assert notify(settings, notification, at=NOW) is True
    assert notify(settings, notification, at=NOW) is False
    outbox = notification_outbox(settings)
    records = outbox.recorded(EventType.APPROVAL_REQUESTED)
    assert [r["DedupKey"] for r in records] == [notification.dedup_key]
    assert records[0]["State"] == RECORDED and records[0]["Data"]["requestId"] == "req-4"
    assert outbox.send_pending("timer", NOW).to_json() == {"sent": 0, "left": 0, "rejected": 0, "errors": []}


def test_the_webhook_signature_verifies_and_a_wrong_secret_is_refused(
        azurite: Azurite, clean_outbox: None, receiver: WebhookReceiver) -> None:
    wrong = _settings(azurite, NOTIFICATION_WEBHOOK_URL=receiver.url,
                      NOTIFICATION_WEBHOOK_SECRET="not-the-secret")
    notification = approval_requested("req-5")
    assert notify(wrong, notification, at=NOW) is True
    assert receiver.bad_signatures == 1 and receiver.deliveries == []
    record = notification_outbox(wrong).find(notification.dedup_key)
    assert record is not None and record["State"] == PENDING and "401" in record["LastError"]

    right = _settings(azurite, NOTIFICATION_WEBHOOK_URL=receiver.url, NOTIFICATION_WEBHOOK_SECRET=SECRET)
    assert notification_outbox(right).send_pending("timer", NOW + timedelta(minutes=5)).sent == 1
    delivery = receiver.deliveries[0]
    assert delivery["headers"][SIGNATURE_HEADER].startswith("sha256=")
    assert delivery["event"]["id"] == notification.event_id


def test_the_topic_refuses_what_event_grid_refuses(settings: Settings, topic: EventGridTopicStandIn) -> None:
    def post(body: bytes, content_type: str = "application/cloudevents-batch+json; charset=utf-8",
             token: str | None = "t") -> int:
        headers = {"Content-Type": content_type} | ({"Authorization": f"Bearer {token}"} if token else {})
        request = urllib.request.Request(f"{topic.endpoint}?api-version={API_VERSION}", data=body,
                                         headers=headers)
        context = ssl.create_default_context(cafile=os.environ["REQUESTS_CA_BUNDLE"])
        try:
            with urllib.request.urlopen(request, context=context) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    good = {"id": "1", "source": "/s", "specversion": "1.0", "type": "T", "data": {}}
    assert post(json.dumps([good]).encode()) == 200
    assert post(json.dumps([good]).encode(), token=None) == 401
    for missing in ("id", "source", "specversion", "type"):
        assert post(json.dumps([{k: v for k, v in good.items() if k != missing}]).encode()) == 400, missing
    assert post(json.dumps([good | {"specversion": "0.3"}]).encode()) == 400
    assert post(json.dumps([good | {"data": "x" * 1_048_576}]).encode()) == 413
    assert post(json.dumps([good]).encode(), content_type="application/json") == 400
    assert [e["id"] for e in topic.events] == ["1"]


def _digest(notification: Notification) -> str:
    return hashlib.sha256(notification.dedup_key.encode()).hexdigest()[:40]


class ScriptedChannel:
    """A channel answering each send with the next outcome: None (delivered) or an exception."""

    def __init__(self, name: str, outcomes: list[Exception | None]) -> None:
        self.name = name
        self.outcomes = outcomes
        self.sent: list[str] = []

    def send(self, event: CloudEvent) -> None:
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        self.sent.append(str(event.id))


def test_each_channel_gets_a_notification_once_whatever_the_other_does(azurite: Azurite, clean_outbox: None):
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    steady = ScriptedChannel("steady", [])
    flaky = ScriptedChannel("flaky", [SendRefused("503"), SendUnknown("timed out"), None])
    outbox = NotificationOutbox(service, [steady, flaky])
    notification = approval_requested("req-6")
    assert outbox.notify(notification, NOW, attempt="first")
    assert steady.sent == [notification.event_id] and flaky.sent == []
    assert outbox.find(notification.dedup_key)["State"] == PENDING  # type: ignore[index]

    # The answer was lost: claimed, and left alone until the claim times out.
    assert outbox.send_pending("timer-1", NOW + timedelta(minutes=5)).left == 1
    assert outbox.find(notification.dedup_key)["State"] == SENDING  # type: ignore[index]
    assert outbox.send_pending("timer-2", NOW + timedelta(minutes=6)).left == 1
    report = outbox.send_pending("timer-3", NOW + timedelta(minutes=5) + CLAIM_TIMEOUT)
    assert report.sent == 1
    assert steady.sent == [notification.event_id] and flaky.sent == [notification.event_id]
    record = outbox.find(notification.dedup_key)
    assert record is not None and record["State"] == SENT and record["Attempts"] == 3


def test_an_event_the_receiver_refuses_as_such_is_set_aside_not_retried(azurite: Azurite, clean_outbox: None):
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    refusing = ScriptedChannel("refusing", [SendRefused("400 bad event", permanent=True)])
    outbox = NotificationOutbox(service, [refusing])
    notification = approval_requested("req-7")
    assert outbox.notify(notification, NOW, attempt="first")
    record = outbox.find(notification.dedup_key)
    assert record is not None and record["State"] == REJECTED and "400 bad event" in record["LastError"]
    assert outbox.send_pending("timer", NOW + timedelta(hours=1)).to_json()["sent"] == 0
    assert refusing.sent == []


def test_an_unresolved_key_vault_reference_holds_the_webhook_only(azurite: Azurite, clean_outbox: None,
                                                                  receiver: WebhookReceiver) -> None:
    reference = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/webhook)"
    settings = _settings(azurite, NOTIFICATION_WEBHOOK_URL=receiver.url,
                         NOTIFICATION_WEBHOOK_SECRET=reference)
    notification = approval_requested("req-8")
    assert notify(settings, notification, at=NOW) is True
    assert receiver.deliveries == [] and receiver.bad_signatures == 0  # nothing signed with the reference
    record = notification_outbox(settings).find(notification.dedup_key)
    assert record is not None and record["State"] == PENDING
    assert "NOTIFICATION_WEBHOOK_SECRET is a Key Vault reference" in record["LastError"]
