"""Publishing CloudEvents 1.0: to an Event Grid topic, and to an optional webhook signed with HMAC-SHA256.

Event Grid: ``azure.eventgrid.EventGridPublisherClient(endpoint, credential)`` with a TokenCredential
(Microsoft Entra ID: the topic has local auth off, the app's identity holds "EventGrid Data Sender"),
sending ``azure.core.messaging.CloudEvent`` objects. Sources: the Python API reference,
"EventGridPublisherClient Class" (``EventGridPublisherClient(endpoint, credential: AzureKeyCredential |
AzureSasCredential | TokenCredential, *, namespace_topic=None, api_version=None)``; no namespace_topic means
an Event Grid Basic topic, API version 2018-01-01), and the topic endpoint form in the @azure/eventgrid
reference: ``https://<topic>.<region>-1.eventgrid.azure.net/api/events`` (the topic's
``properties.endpoint``). What the SDK sends (azure-eventgrid 4.22.1, ``_legacy/_publisher_client.py``,
``_legacy/_helpers.py``): one POST of the events as a JSON array with ``Content-Type:
application/cloudevents-batch+json; charset=utf-8`` and ``Authorization: Bearer <token>`` for scope
``https://eventgrid.azure.net/.default`` (azure-core's bearer policy refuses plain http, so even the local
stand-in is https).

Webhook: the same event as CloudEvents structured JSON (``Content-Type: application/cloudevents+json``),
POSTed with ``X-Signature-256: sha256=<hex HMAC-SHA256 of the body bytes, keyed with the secret>`` (the
convention of GitHub webhooks, "Validating webhook deliveries"). A receiver computes the same HMAC over
the raw body it received and compares in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridPublisherClient

from shared.azure.clients import shared_client

# Event Grid: an event (and a batch) is at most 1 MB ("Azure Event Grid quotas and limits": "Event size:
# 1 MB", "Event batch size: 1 MB"; events over 64 KB are charged in 64 KB increments).
MAX_EVENT_BYTES = 1_048_576
SIGNATURE_HEADER = "X-Signature-256"
SIGNATURE_PREFIX = "sha256="
CLOUDEVENTS_JSON = "application/cloudevents+json; charset=utf-8"
# azure-core's retries per publish call: a refused send stays in the outbox for the timer, so a call
# does not sit out an outage retrying.
PUBLISH_RETRIES = 2
# For an Event Grid Basic topic the client drops its constructor's keywords (azure-eventgrid 4.22.1
# ``_patch.py``), so the retry count goes with each send; send() also hands its keywords to the event
# model's serializer, which logs "retry_total is not a known attribute" each time: that one message goes.


class _DropRetryKeywordWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "retry_total is not a known attribute" not in record.getMessage()


logging.getLogger("azure.eventgrid._legacy._generated._serialization").addFilter(_DropRetryKeywordWarning())
# App Service resolves "@Microsoft.KeyVault(SecretUri=...)" before the app reads it; the text itself reaching
# the app means it was not resolved ("Use Key Vault references as app settings", troubleshooting). Only the
# webhook waits then (it stays pending, retried once fixed); patching goes on.
UNRESOLVED_KEY_VAULT_REFERENCE = "@Microsoft.KeyVault("
# How long a webhook POST may take before it counts as failed (its outcome then unknown).
WEBHOOK_TIMEOUT_SECONDS = 30


class SendRefused(Exception):
    """The receiver answered and refused, or was not reached: nothing arrived. ``permanent`` when sending
    the same event again cannot help (400, 413: the event itself is refused)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class SendUnknown(Exception):
    """The request may have arrived (the answer was lost): sending again may deliver it twice."""


PERMANENT_STATUSES = frozenset({400, 413})


def cloud_event(event_id: str, source: str, event_type: str, subject: str, data: Mapping[str, Any],
                time: datetime) -> CloudEvent:
    return CloudEvent(source=source, type=event_type, data=dict(data), subject=subject, id=event_id,
                      time=time, datacontenttype="application/json", specversion="1.0")


def structured_json(event: CloudEvent) -> dict[str, Any]:
    """The event in CloudEvents 1.0 JSON format (structured mode): what a webhook receives and what each
    element of Event Grid's batch holds."""
    wire: dict[str, Any] = {"specversion": event.specversion, "id": event.id, "source": event.source,
                            "type": event.type}
    if event.time is not None:
        # Milliseconds, as azure-eventgrid writes it: both channels carry the same text.
        wire["time"] = event.time.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    for name in ("subject", "datacontenttype", "dataschema"):
        value = getattr(event, name)
        if value is not None:
            wire[name] = value
    if event.data is not None:
        wire["data"] = event.data
    wire.update(event.extensions or {})
    return wire


def event_bytes(event: CloudEvent) -> bytes:
    return json.dumps(structured_json(event), separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret: str, body: bytes) -> str:
    """The X-Signature-256 value of ``body``: ``sha256=`` and the hex HMAC-SHA256 keyed with ``secret``."""
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body``, compared in constant time (what a receiver does)."""
    return bool(header) and hmac.compare_digest(signature(secret, body), str(header))


@dataclass(frozen=True)
class EventGridTopic:
    """An Event Grid topic taking CloudEvents, signed in with ``credential``."""

    endpoint: str
    credential: TokenCredential
    name: str = "eventGrid"

    def _client(self) -> EventGridPublisherClient:
        # One per process, endpoint and credential (shared.azure.clients); never closed here.
        return shared_client(
            ("eventgrid", self.endpoint, self.credential),
            lambda: EventGridPublisherClient(self.endpoint, self.credential),
        )

    def send(self, event: CloudEvent) -> None:
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        try:
            self._client().send([event], retry_total=PUBLISH_RETRIES)
        except HttpResponseError as error:
            status = error.status_code or 0
            raise SendRefused(f"Event Grid {status} {error.reason}: {error.message}"[:500],
                              permanent=status in PERMANENT_STATUSES) from error
        except ServiceRequestError as error:  # the request was not sent (name, connection refused)
            raise SendRefused(f"Event Grid not reached: {error}"[:500]) from error
        except ServiceResponseError as error:  # sent, but the answer was lost
            raise SendUnknown(f"Event Grid answer lost: {error}"[:500]) from error


@dataclass(frozen=True)
class Webhook:
    """An HTTPS endpoint receiving each event as CloudEvents JSON, signed with ``secret``."""

    url: str
    secret: str
    name: str = "webhook"

    def send(self, event: CloudEvent) -> None:
        if self.secret.startswith(UNRESOLVED_KEY_VAULT_REFERENCE):
            # Signing with the reference's text would announce a key anyone can read in the app settings.
            raise SendRefused("NOTIFICATION_WEBHOOK_SECRET is a Key Vault reference the platform did not "
                              "resolve: grant the app's identity Key Vault Secrets User and check the URI")
        body = event_bytes(event)
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": CLOUDEVENTS_JSON, SIGNATURE_HEADER: signature(self.secret, body),
            "ce-id": str(event.id), "User-Agent": "patch-management-notifications",
        })  # fmt: skip
        try:
            # https, or http to a loopback address only (shared.settings._url).
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as answer:
                answer.read()
        except urllib.error.HTTPError as error:
            raise SendRefused(f"webhook {error.code} {error.reason}"[:500],
                              permanent=error.code in PERMANENT_STATUSES) from error
        except urllib.error.URLError as error:  # not reached: nothing arrived
            raise SendRefused(f"webhook not reached: {error.reason}"[:500]) from error
        except (TimeoutError, ConnectionError, OSError) as error:  # sent, no answer
            raise SendUnknown(f"webhook answer lost: {type(error).__name__}: {error}"[:500]) from error
