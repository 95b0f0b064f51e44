"""Notifications: what governed patching tells people, as CloudEvents 1.0, each raised exactly once.

``notify(settings, Notification(type, subject, data, dedup_key))`` records the notification in the
``NotificationOutbox`` table under its ``dedup_key`` and then sends it; a second ``notify`` with the same
``dedup_key`` finds the record and does nothing (returns False). With neither ``EVENT_GRID_TOPIC_ENDPOINT``
nor ``NOTIFICATION_WEBHOOK_URL`` set, the notification is only recorded (``State`` ``recorded``).
A send that fails leaves the notification pending; the timer ``send_notifications``
(functions/notifications.py) sends it again. ``notify`` never raises for a channel being away; it raises
only when the outbox itself cannot be written (so an activity is retried and notifies then).
Call it from activities and HTTP functions, never from an orchestrator (it writes a table and sends).
Records are kept: they are the dedup guard (a FirstSeen is announced once, ever) and the notification log.

Each notification is one CloudEvent: ``id`` derived from the dedup key (the same on every retry: a
subscriber dedupes on it, Event Grid delivers at least once), ``source`` :data:`SOURCE`, ``type`` the
:class:`EventType` value, ``subject`` as below, ``time`` when it was raised, ``datacontenttype``
``application/json``, ``data`` the object below (camelCase; times are ISO 8601 UTC strings; ``osType`` is
``Windows`` | ``Linux``; ``key`` is :attr:`shared.governance.patch_refs.PatchRef.key`, ``KB5034441`` or
``openssl=3.0.2-0ubuntu1.12``). Fields marked ``?`` may be absent or null; no other field is accepted.

``PatchManagement.Update.FirstSeen`` - a critical or security update version seen for the first time.
  subject ``/patches/{osType}/{key}``; dedup ``Update.FirstSeen|{PatchRef.table_key}``
  data: ``osType, key, classification, machinesNeeding: int, firstSeen: time, title?, product?, kbId?,
  packageName?, packageVersion?``

``PatchManagement.Approval.Requested`` - an operator asked for approval.
  subject ``/approvals/{requestId}``; dedup ``Approval.Requested|{requestId}``
  data: ``requestId, category, patches: [{osType, key}], requestedBy, justification, requestedAt: time,
  release?``

``PatchManagement.Approval.Granted`` | ``.Approval.Rejected`` | ``.Approval.Deferred`` - a decision.
  subject ``/approvals/{requestId}`` (``/categories/{category}/rules`` for a rule's approval);
  dedup ``Approval.{Granted|Rejected|Deferred}|{requestId or rule:category|key}|{decidedAt}``
  data: ``category, patches: [{osType, key}], decidedBy, justification, decidedAt: time, requestId?
  (null when ``decidedBy`` is ``rule:<category>``), requestedBy?, release?, deferUntil?: time
  (required for Deferred)``

``PatchManagement.Approval.Revoked`` - an approver took back an approved request's approval (its updates
  are ``authorized`` again, awaiting a new decision).
  subject ``/approvals/{requestId}``; dedup ``Approval.Revoked|{requestId}|{decidedAt}``
  data: ``category, patches: [{osType, key}], decidedBy (who revoked), justification, decidedAt: time,
  requestId, requestedBy?, release?``

``PatchManagement.RingRun.Started`` | ``.RingRun.Finished`` | ``.RingRun.Failed`` - a deployment run.
  subject ``/deployments/{deployment}/runs/{runId}``; dedup ``RingRun.{Started|Finished|Failed}|{runId}``
  data (Started): ``deployment, runId, machines: int, startedAt: time, category?, ring?, release?,
  rings?: [category/ring]``
  data (Finished): ``deployment, runId, machines: int, succeeded: int, failed: int, finishedAt: time,
  category?, ring?, release?, rings?, status?, results?: {status: int}, failedUpdates?: [{osType, key,
  machines: int}] (at most 50)``
  data (Failed): ``deployment, runId, reason, failedAt: time, machines?: int, succeeded?: int,
  failed?: int, category?, ring?, release?, rings?, status?, results?, failedUpdates?``

``PatchManagement.Deadline.Approaching`` - an update still missing close to its category's deadline.
  subject ``/categories/{category}/patches/{osType}/{key}``;
  dedup ``Deadline.Approaching|{category}|{PatchRef.table_key}|{deadline date}``
  data: ``category, osType, key, classification, deadline: time, daysLeft: int, machinesMissing: int,
  title?, machines?: [machine id] (at most 100)``

``PatchManagement.Machine.RolledBack`` - a machine restored from its pre-patch snapshots (shared.safety):
  after a failed health check (``trigger`` ``health``), a failed install (``install``) or on request
  (``manual``). subject ``/deployments/{deployment}/runs/{runId}/machines/{computer}``;
  dedup ``Machine.RolledBack|{runId}|{machine key}``
  data: ``runId, deployment, machine (resource id), computer, reason, restorePoint: time (when the
  snapshots were taken), rolledBackAt: time, trigger, category?, ring?, patches?: [{osType, key}] (the
  updates the restore took off), requestedBy?, disks?: [disk id] (the disks restored)``
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from itertools import islice
from typing import Any, Protocol

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.messaging import CloudEvent
from azure.data.tables import TableClient, TableServiceClient, TableTransactionError, UpdateMode

from shared.azure.credentials import credential_for
from shared.azure.event_grid import (
    MAX_EVENT_BYTES,
    EventGridTopic,
    SendRefused,
    SendUnknown,
    Webhook,
    cloud_event,
    event_bytes,
)
from shared.azure.tables import ensure_table, join_property, split_property, table_service
from shared.settings import Settings

log = logging.getLogger(__name__)


class EventType(StrEnum):
    UPDATE_FIRST_SEEN = "PatchManagement.Update.FirstSeen"
    APPROVAL_REQUESTED = "PatchManagement.Approval.Requested"
    APPROVAL_GRANTED = "PatchManagement.Approval.Granted"
    APPROVAL_REJECTED = "PatchManagement.Approval.Rejected"
    APPROVAL_DEFERRED = "PatchManagement.Approval.Deferred"
    APPROVAL_REVOKED = "PatchManagement.Approval.Revoked"
    RING_RUN_STARTED = "PatchManagement.RingRun.Started"
    RING_RUN_FINISHED = "PatchManagement.RingRun.Finished"
    RING_RUN_FAILED = "PatchManagement.RingRun.Failed"
    DEADLINE_APPROACHING = "PatchManagement.Deadline.Approaching"
    MACHINE_ROLLED_BACK = "PatchManagement.Machine.RolledBack"


# The CloudEvent ``source`` of every notification (a URI-reference naming the producer, CloudEvents 1.0).
SOURCE = "/patch-management"

# -- the data schema of each type (the module docstring says the same in words) ----------------------

_TIME, _INT, _STR, _PATCHES, _IDS = "time", "int", "str", "patches", "ids"
_COUNTS, _FAILED_UPDATES = "counts", "failedUpdates"


@dataclass(frozen=True)
class DataSchema:
    required: Mapping[str, str]
    optional: Mapping[str, str] = field(default_factory=dict)


_DECISION = DataSchema(
    {"category": _STR, "patches": _PATCHES, "decidedBy": _STR, "justification": _STR, "decidedAt": _TIME},
    {"requestId": _STR, "requestedBy": _STR, "release": _STR, "deferUntil": _TIME},
)
# ``rings``: every category target of the run, ``category/ring`` (``category`` alone: all its rings).
_RUN_SCOPE = {"category": _STR, "ring": _STR, "release": _STR, "rings": _IDS}
# A run's end: machines by result status, and the updates that failed (with on how many machines).
_RUN_END = {"results": _COUNTS, "failedUpdates": _FAILED_UPDATES}
SCHEMAS: Mapping[EventType, DataSchema] = {
    EventType.UPDATE_FIRST_SEEN: DataSchema(
        {"osType": _STR, "key": _STR, "classification": _STR, "machinesNeeding": _INT, "firstSeen": _TIME},
        {"title": _STR, "product": _STR, "kbId": _STR, "packageName": _STR, "packageVersion": _STR},
    ),
    EventType.APPROVAL_REQUESTED: DataSchema(
        {"requestId": _STR, "category": _STR, "patches": _PATCHES, "requestedBy": _STR,
         "justification": _STR, "requestedAt": _TIME},
        {"release": _STR},
    ),
    EventType.APPROVAL_GRANTED: _DECISION,
    EventType.APPROVAL_REJECTED: _DECISION,
    EventType.APPROVAL_DEFERRED: DataSchema(
        {**_DECISION.required, "deferUntil": _TIME},
        {k: v for k, v in _DECISION.optional.items() if k != "deferUntil"},
    ),
    # An approval taken back: decidedBy is who revoked it, the updates are authorized again.
    EventType.APPROVAL_REVOKED: DataSchema(
        {**_DECISION.required, "requestId": _STR},
        {k: v for k, v in _DECISION.optional.items() if k not in ("requestId", "deferUntil")},
    ),
    EventType.RING_RUN_STARTED: DataSchema(
        {"deployment": _STR, "runId": _STR, "machines": _INT, "startedAt": _TIME}, _RUN_SCOPE
    ),
    EventType.RING_RUN_FINISHED: DataSchema(
        {"deployment": _STR, "runId": _STR, "machines": _INT, "succeeded": _INT, "failed": _INT,
         "finishedAt": _TIME},
        {**_RUN_SCOPE, **_RUN_END, "status": _STR},
    ),
    EventType.RING_RUN_FAILED: DataSchema(
        {"deployment": _STR, "runId": _STR, "reason": _STR, "failedAt": _TIME},
        {**_RUN_SCOPE, **_RUN_END, "machines": _INT, "succeeded": _INT, "failed": _INT, "status": _STR},
    ),
    EventType.DEADLINE_APPROACHING: DataSchema(
        {"category": _STR, "osType": _STR, "key": _STR, "classification": _STR, "deadline": _TIME,
         "daysLeft": _INT, "machinesMissing": _INT},
        {"title": _STR, "machines": _IDS},
    ),
    EventType.MACHINE_ROLLED_BACK: DataSchema(
        {"runId": _STR, "deployment": _STR, "machine": _STR, "computer": _STR, "reason": _STR,
         "restorePoint": _TIME, "rolledBackAt": _TIME, "trigger": _STR},
        {"category": _STR, "ring": _STR, "patches": _PATCHES, "requestedBy": _STR, "disks": _IDS},
    ),
}
# Machines listed in a Deadline.Approaching event, at most (the count is machinesMissing).
MAX_LISTED_MACHINES = 100
# Failed updates listed in a RingRun event, at most (the most failed first; the machines' rows have all).
MAX_LISTED_UPDATES = 50
# A dedup key is stored in the outbox row; its digest is the RowKey, so any text goes, within reason.
MAX_DEDUP_KEY_CHARS = 1024
# Room left in an event for its attributes (id, source, type, subject, time: a few hundred bytes).
_ENVELOPE_BYTES = 4096


class NotificationError(ValueError):
    """A notification that does not follow its type's schema; names every field at fault."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def _wire(value: Any) -> Any:
    """``value`` with datetimes and dates as ISO 8601 text (datetimes in UTC, ``Z``)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise NotificationError([f"datetime {value!r} has no time zone"])
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_wire(v) for v in value]
    return value


def _type_problem(name: str, kind: str, value: Any) -> str | None:
    if kind == _STR:
        ok = isinstance(value, str) and value != ""
        rule = "a non-empty string"
    elif kind == _INT:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        rule = "a whole number >= 0"
    elif kind == _TIME:
        ok = isinstance(value, str) and _is_iso_time(value)
        rule = "an ISO 8601 time (or a datetime with a time zone)"
    elif kind == _PATCHES:
        ok = isinstance(value, list) and bool(value) and all(
            isinstance(p, dict) and set(p) == {"osType", "key"}
            and all(isinstance(v, str) and v for v in p.values()) for p in value)  # fmt: skip
        rule = "a non-empty list of {osType, key}"
    elif kind == _COUNTS:
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in value.items())  # fmt: skip
        rule = "an object of whole numbers >= 0"
    elif kind == _FAILED_UPDATES:
        ok = isinstance(value, list) and len(value) <= MAX_LISTED_UPDATES and all(
            isinstance(u, dict) and set(u) == {"osType", "key", "machines"}
            and all(isinstance(u[k], str) and u[k] for k in ("osType", "key"))
            and isinstance(u["machines"], int) and not isinstance(u["machines"], bool) and u["machines"] > 0
            for u in value)  # fmt: skip
        rule = f"a list of at most {MAX_LISTED_UPDATES} {{osType, key, machines}}"
    else:
        ok = isinstance(value, list) and len(value) <= MAX_LISTED_MACHINES and all(
            isinstance(v, str) and v for v in value)  # fmt: skip
        rule = f"a list of at most {MAX_LISTED_MACHINES} ids"
    return None if ok else f"data.{name} must be {rule} (got {value!r:.80})"


def _is_iso_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def schema_problems(event_type: EventType, data: Mapping[str, Any]) -> list[str]:
    """Every way ``data`` (in wire form) breaks ``event_type``'s schema; empty when it follows it."""
    schema = SCHEMAS[event_type]
    problems = [f"data.{name} is required for {event_type.value}" for name in schema.required
                if data.get(name) is None]
    known = {**schema.required, **schema.optional}
    problems += [f"data.{name} is not a field of {event_type.value} (accepted: {', '.join(sorted(known))})"
                 for name in data if name not in known]
    for name, value in data.items():
        # An optional text left empty (a title the catalogue did not give) counts as absent.
        absent = value is None or (value == "" and name in schema.optional)
        if name in known and not absent:
            problem = _type_problem(name, known[name], value)
            if problem:
                problems.append(problem)
    return problems


@dataclass(frozen=True)
class Notification:
    """One thing to tell, raised at most once per ``dedup_key``. ``data`` may hold datetimes (sent as ISO
    8601 UTC); it is checked against :data:`SCHEMAS` when made, and NotificationError names every fault."""

    type: EventType
    subject: str
    data: Mapping[str, Any]
    dedup_key: str

    def __post_init__(self) -> None:
        problems: list[str] = []
        try:
            event_type = EventType(self.type)
        except ValueError:
            raise NotificationError([f"type {self.type!r} is not one of {', '.join(EventType)}"]) from None
        object.__setattr__(self, "type", event_type)
        if not self.subject.startswith("/"):
            problems.append(f"subject {self.subject!r} must be a path starting with '/'")
        if not self.dedup_key or len(self.dedup_key) > MAX_DEDUP_KEY_CHARS:
            problems.append(f"dedup_key must be 1 to {MAX_DEDUP_KEY_CHARS} characters")
        data = _wire(self.data)
        object.__setattr__(self, "data", data)
        problems += schema_problems(event_type, data)
        size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_EVENT_BYTES - _ENVELOPE_BYTES:
            problems.append(f"data is {size} bytes; an Event Grid event is at most {MAX_EVENT_BYTES}")
        if problems:
            raise NotificationError(problems)

    @property
    def event_id(self) -> str:
        """The CloudEvent id: a UUID from the dedup key, the same on every send of this notification."""
        return str(uuid.UUID(hashlib.sha256(self.dedup_key.encode()).hexdigest()[:32]))


# -- the outbox -----------------------------------------------------------------------------------------

OUTBOX_TABLE = "NotificationOutbox"
PARTITION = "notification"  # a few notifications a day to a few thousand: one partition serves them
RECORD_PREFIX, PENDING_PREFIX = "n|", "p|"
_PENDING_END = "p}"  # "}" follows "|": the end of the pending markers' RowKey range
RECORDED, PENDING, SENDING, SENT, REJECTED = "recorded", "pending", "sending", "sent", "rejected"
# A claim older than this belongs to a sender that died or lost its answer: the notification is sent
# again, with the same CloudEvent id. Well past a send's own timeouts (azure-core's retries, the
# webhook's 30 s), so a live sender is never overtaken.
CLAIM_TIMEOUT = timedelta(minutes=10)
# Pending notifications a sender call takes at most, so one timer run stays short; the rest waits.
MAX_PER_SEND = 200


class Channel(Protocol):
    """Where a notification goes (shared.azure.event_grid: EventGridTopic, Webhook)."""

    @property
    def name(self) -> str: ...

    def send(self, event: CloudEvent) -> None: ...


@dataclass
class SendReport:
    sent: int = 0
    left: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "left": self.left, "rejected": self.rejected, "errors": self.errors[:5]}


def _row_key(dedup_key: str) -> str:
    return hashlib.sha256(dedup_key.encode()).hexdigest()[:40]


class NotificationOutbox:
    """The NotificationOutbox table, and the channels its notifications go to (none: only recorded).

    Per notification, PartitionKey ``notification``: a record ``n|{digest of dedup key}`` (type, subject,
    data, dedup key, event id, raised, State, per channel ``{Channel}Sent``, Attempts, LastError), kept
    as the at-most-once guard; and while it waits, a marker ``p|{digest}``, made with the record in one
    transaction and deleted with its last send, so a sender reads only what waits."""

    def __init__(self, service: TableServiceClient, channels: Sequence[Channel] = ()) -> None:
        self._table: TableClient = ensure_table(service, OUTBOX_TABLE)
        self._channels = list(channels)

    @property
    def table(self) -> TableClient:
        return self._table

    def record(self, notification: Notification, at: datetime) -> bool:
        """Record ``notification`` unless its dedup key was recorded before; True when it is new."""
        digest = _row_key(notification.dedup_key)
        data = json.dumps(notification.data, separators=(",", ":"), ensure_ascii=False)
        record = {
            "PartitionKey": PARTITION, "RowKey": RECORD_PREFIX + digest, "DedupKey": notification.dedup_key,
            "Type": notification.type.value, "Subject": notification.subject,
            "EventId": notification.event_id, "Raised": at, "State": PENDING if self._channels else RECORDED,
            "Attempts": 0, **split_property("Data", data),
        }  # fmt: skip
        operations: list[Any] = [("create", record)]
        if self._channels:
            operations.append(("create", {"PartitionKey": PARTITION, "RowKey": PENDING_PREFIX + digest,
                                          "Queued": at}))
        try:
            self._table.submit_transaction(operations)
        except (TableTransactionError, ResourceExistsError) as error:
            if self._exists(digest):
                return False
            raise error
        return True

    def _exists(self, digest: str) -> bool:
        try:
            self._table.get_entity(PARTITION, RECORD_PREFIX + digest, select=["RowKey"])
        except ResourceNotFoundError:
            return False
        return True

    def notify(self, notification: Notification, at: datetime, attempt: str) -> bool:
        """Record, then send now if new. Returns whether it was new; a failed send waits for the timer."""
        if not self.record(notification, at):
            return False
        if self._channels:
            report = SendReport()
            self._send_guarded(_row_key(notification.dedup_key), attempt, at, report)
            if report.errors:
                log.warning("notification %s: %s (the outbox timer sends it again)",
                            notification.dedup_key, "; ".join(report.errors))
        return True

    # -- sending ----------------------------------------------------------------------------------------

    def send_pending(self, attempt: str, now: datetime) -> SendReport:
        """Send what waits (never raises for a channel being away)."""
        report = SendReport()
        if not self._channels:
            return report
        markers = self._table.query_entities(
            "PartitionKey eq @p and RowKey ge @start and RowKey lt @end",
            parameters={"p": PARTITION, "start": PENDING_PREFIX, "end": _PENDING_END}, select=["RowKey"],
        )
        for marker in islice(markers, MAX_PER_SEND):
            self._send_guarded(str(marker["RowKey"])[len(PENDING_PREFIX):], attempt, now, report)
        return report

    def _send_guarded(self, digest: str, attempt: str, now: datetime, report: SendReport) -> None:
        """:meth:`_send_one`, an unforeseen failure (storage away mid-send, a bug in a channel) reported
        instead of raised: the record is there, claimed at worst, and the timer takes it up again."""
        try:
            self._send_one(digest, attempt, now, report)
        except Exception as error:  # noqa: BLE001 - one notification never stops the others or the caller
            report.left += 1
            report.errors.append(f"{digest}: {type(error).__name__}: {error}"[:500])

    def _send_one(self, digest: str, attempt: str, now: datetime, report: SendReport) -> None:
        try:
            record = self._table.get_entity(PARTITION, RECORD_PREFIX + digest)
        except ResourceNotFoundError:  # a marker without its record cannot be: drop it
            self._drop_marker(digest)
            return
        state = record.get("State")
        if state in (SENT, REJECTED):
            self._drop_marker(digest)
            return
        claimed = record.get("Claimed")
        if state == SENDING and isinstance(claimed, datetime) and claimed > now - CLAIM_TIMEOUT:
            report.left += 1  # another sender is at it
            return
        try:  # claim it: of two senders, the one whose ETag still matches goes on
            self._table.update_entity(
                {"PartitionKey": PARTITION, "RowKey": record["RowKey"], "State": SENDING, "Attempt": attempt,
                 "Claimed": now, "Attempts": int(record.get("Attempts") or 0) + 1},
                mode=UpdateMode.MERGE, etag=record.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )  # fmt: skip
        except HttpResponseError:
            report.left += 1
            return
        event = _event_of(record)
        errors: list[str] = []
        unknown = refused = permanent = False
        for channel in self._channels:
            if record.get(f"{channel.name}Sent"):
                continue
            try:
                channel.send(event)
            except SendRefused as error:
                errors.append(f"{channel.name}: {error}")
                permanent |= error.permanent
                refused |= not error.permanent
                continue
            except SendUnknown as error:  # may have arrived: stays claimed, sent again after CLAIM_TIMEOUT
                errors.append(f"{channel.name}: {error}")
                unknown = True
                continue
            # Remembered at once, so a later failure on another channel never sends this one twice.
            self._table.update_entity({"PartitionKey": PARTITION, "RowKey": record["RowKey"],
                                       f"{channel.name}Sent": now}, mode=UpdateMode.MERGE)
        # Unknown outcome first (no second sender before CLAIM_TIMEOUT), then a refusal worth retrying,
        # then a refusal of the event itself (kept, with the answer, for an operator).
        state_after = SENDING if unknown else PENDING if refused else REJECTED if permanent else SENT
        mark: dict[str, Any] = {"PartitionKey": PARTITION, "RowKey": record["RowKey"], "State": state_after,
                                "LastError": "; ".join(errors)[:4000]}
        if state_after in (SENDING, PENDING):
            report.left += 1
            report.errors += errors
            self._table.update_entity(mark, mode=UpdateMode.MERGE)
            return
        if state_after == SENT:
            mark["Sent"] = now
        # Sent or rejected: the record says so and the marker goes, together.
        operations: list[Any] = [("upsert", mark, {"mode": UpdateMode.MERGE}),
                                 ("delete", {"PartitionKey": PARTITION, "RowKey": PENDING_PREFIX + digest})]
        try:
            self._table.submit_transaction(operations)
        except TableTransactionError:  # the marker was gone already
            self._table.update_entity(mark, mode=UpdateMode.MERGE)
        if state_after == SENT:
            report.sent += 1
        else:
            report.rejected += 1
            report.errors += errors

    def _drop_marker(self, digest: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self._table.delete_entity(PARTITION, PENDING_PREFIX + digest)

    # -- reading (tests, operators) ---------------------------------------------------------------------

    def find(self, dedup_key: str) -> dict[str, Any] | None:
        """The record of ``dedup_key`` (with ``Data`` parsed), or None."""
        try:
            record = self._table.get_entity(PARTITION, RECORD_PREFIX + _row_key(dedup_key))
        except ResourceNotFoundError:
            return None
        return {**{k: v for k, v in record.items() if not k.startswith("Data")},
                "Data": json.loads(join_property(record, "Data"))}

    def recorded(self, event_type: EventType | None = None) -> list[dict[str, Any]]:
        """Every record (of ``event_type``), with ``Data`` parsed, in no particular order."""
        query = "PartitionKey eq @p and RowKey ge @start and RowKey lt @end"
        parameters = {"p": PARTITION, "start": RECORD_PREFIX, "end": "n}"}
        if event_type is not None:
            query += " and Type eq @type"
            parameters["type"] = event_type.value
        return [{**{k: v for k, v in r.items() if not k.startswith("Data")},
                 "Data": json.loads(join_property(r, "Data"))}
                for r in self._table.query_entities(query, parameters=parameters)]  # fmt: skip


def _event_of(record: Mapping[str, Any]) -> CloudEvent:
    raised = record["Raised"]
    return cloud_event(str(record["EventId"]), SOURCE, str(record["Type"]), str(record["Subject"]),
                       json.loads(join_property(record, "Data")), raised)


def event_of(notification: Notification, at: datetime) -> CloudEvent:
    """The CloudEvent ``notification`` is sent as (tests, documentation)."""
    return cloud_event(notification.event_id, SOURCE, notification.type.value, notification.subject,
                       notification.data, at)


def event_size(notification: Notification, at: datetime) -> int:
    return len(event_bytes(event_of(notification, at)))


# -- the app's outbox -----------------------------------------------------------------------------------


def channels_for(settings: Settings, credential: TokenCredential | None = None) -> list[Channel]:
    """The channels the settings configure: the Event Grid topic, the webhook, both or none."""
    channels: list[Channel] = []
    if settings.event_grid_topic_endpoint:
        signer = credential or credential_for(settings)
        channels.append(EventGridTopic(settings.event_grid_topic_endpoint, signer))
    if settings.notification_webhook_url and settings.notification_webhook_secret:
        channels.append(Webhook(settings.notification_webhook_url, settings.notification_webhook_secret))
    return channels


def notification_outbox(settings: Settings, credential: TokenCredential | None = None) -> NotificationOutbox:
    return NotificationOutbox(table_service(settings, credential), channels_for(settings, credential))


def notify(settings: Settings, notification: Notification, at: datetime | None = None) -> bool:
    """Record ``notification`` once per dedup key and send it (when a channel is configured).

    Returns True when it was new, False when its dedup key was recorded before (nothing is done then).
    Raises only when the outbox cannot be written; a channel that is away leaves it for the timer."""
    now = at or datetime.now(UTC)
    return notification_outbox(settings).notify(notification, now, attempt=f"notify-{uuid.uuid4().hex}")
