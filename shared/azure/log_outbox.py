"""Log Analytics rows through an outbox in Table Storage: written with the inventory, sent later.

An activity that records something puts its rows here (:meth:`LogOutbox.put`) in the same step as
the inventory, and returns; a sender (:meth:`LogOutbox.send_pending`, after each batch and on a
timer) uploads them in calls of at most 1 MB and marks them sent. A Log Analytics outage then delays
rows and never fails an activity, so it never decides whether a machine gets patched.

Layout: table ``LogOutbox``, PartitionKey the Log Analytics table (``Update_CL``, ...), and two kinds
of entity, told apart by their RowKey's prefix:

* a guard per row ever queued, ``g|{RecordId}``: it makes a row queued at most once, and outlives the
  sending as the row's tombstone for :data:`KEEP_SENT`;
* an envelope per group of up to 99 rows, ``p|{queued}-{id}``: the rows' JSON list over ``Row0``,
  ``Row1``, ... (:func:`split_property`), and ``State`` ``pending``, ``sending`` (claimed by the sender
  ``Attempt`` at ``Claimed``) or ``rejected``. A sent envelope is deleted.

A sender reads only the envelopes (one RowKey range), never the tombstones: what it reads grows with
what waits, not with what was ever sent. Claims and marks are one write per envelope, not per row.

At most once per RecordId:

* ``put`` creates an envelope and its rows' guards in one transaction: a redelivered activity finds its
  guards there and queues nothing again (rows new to it are queued alone, each with its guard).
* A sender claims envelopes (pending -> sending) with the ETag it read, in transactions: of two senders
  at once, one wins each envelope and the other skips it.
* It uploads the claimed rows, then deletes their envelopes. An answer with a status (429, 503, ...)
  means the call was refused: its envelopes go back to pending. Any other failure (connection lost,
  host killed) leaves them ``sending``: they may have arrived.
* An envelope still ``sending`` after :data:`CLAIM_TIMEOUT` (its sender died between upload and mark,
  or lost the answer) has its rows looked up in Log Analytics by RecordId before anything else: the
  rows found are not sent again, the others are. The timeout exceeds ingestion latency, so a row that
  arrived is visible by then (see CLAIM_TIMEOUT).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, TableTransactionError, UpdateMode

from shared.azure.credentials import credential_for
from shared.azure.log_ingestion import LogSink, wire_row
from shared.azure.log_query import column_reader
from shared.azure.tables import (
    MAX_TRANSACTION_ENTITIES,
    ensure_table,
    join_property,
    split_property,
    table_service,
)
from shared.log_tables import TABLES, LogTable, check_rows
from shared.settings import Settings

log = logging.getLogger(__name__)

OUTBOX_TABLE = "LogOutbox"
PENDING, SENDING, SENT, REJECTED = "pending", "sending", "sent", "rejected"
GUARD_PREFIX, ENVELOPE_PREFIX = "g|", "p|"
_GUARD_END, _ENVELOPE_END = "g}", "p}"  # "}" follows "|": the end of each RowKey range
# Answers that refuse the rows themselves (the Logs Ingestion API's InvalidContent, RequestEntityTooLarge):
# sending them again cannot help, and one such row must not hold back the others.
ROWS_REFUSED = frozenset({400, 413})
# Logs Ingestion API: 1 MB per call (AZURE-FACTS). Counted on the JSON text before gzip, with room
# for the list's brackets and commas.
MAX_CALL_BYTES = 1_000_000
# An envelope and its rows' guards are one transaction of at most 100 entities (Table limits).
MAX_ENVELOPE_ROWS = MAX_TRANSACTION_ENTITIES - 1
# An entity holds at most 1 MiB, strings counted in UTF-16 (2 bytes a character; Table service data
# model): an envelope's JSON stays under 450,000 characters. A longer single row goes alone.
MAX_ENVELOPE_CHARS = 450_000
# A sender claims at most this many envelopes per table and call, so one activity stays well inside
# the Functions timeout (about a second per 1 MB call); the rest waits for the next call.
MAX_ENVELOPES_PER_SEND = 400
# A claim older than this belongs to a sender that died or lost its answer. Azure Monitor's ingestion
# latency is typically under 3 minutes ("Log data ingestion time in Azure Monitor"); 30 minutes
# leaves a wide margin before a row that did arrive is looked up.
CLAIM_TIMEOUT = timedelta(minutes=30)
# RecordIds per Log Analytics lookup query (32 characters each: the query stays a few KB).
LOOKUP_IDS = 500
# How far back a lookup reaches, on TimeGenerated: a row may wait through an outage of days.
LOOKUP_SPAN = timedelta(days=30)
# Tombstones outlive any redelivery of the activity that queued the row (minutes to hours), then go.
KEEP_SENT = timedelta(days=7)
# azure-core's retries per upload call: a refused call leaves its rows pending for the next sender,
# so the sender does not sit out an outage retrying.
UPLOAD_RETRIES = 2


@dataclass
class SendReport:
    """What one sender call did: rows sent, rows found already in Log Analytics, rows left for later."""

    sent: int = 0
    found: int = 0
    left: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "found": self.found, "left": self.left, "rejected": self.rejected,
                "errors": self.errors[:5]}


Lookup = Callable[[LogTable, Sequence[str]], set[str]]


class _Refused(Exception):
    """Log Analytics answered with a status that is not about the rows (429, 5xx): try later."""

    def __init__(self, error: HttpResponseError) -> None:
        super().__init__(f"{error.status_code} {error.reason}")


class LogOutbox:
    def __init__(self, service: TableServiceClient, sink: LogSink | None = None,
                 lookup: Lookup | None = None) -> None:
        self._table: TableClient = ensure_table(service, OUTBOX_TABLE)
        self._sink = sink
        self._lookup = lookup

    # -- queueing (the recording activities) ---------------------------------------------------

    def put(self, table: LogTable, rows: Sequence[Mapping[str, Any]], at: datetime) -> int:
        """Queue ``rows`` (each with its RecordId) unless queued before; returns how many were new."""
        if not rows:
            return 0
        check_rows(table, rows)
        unique = {str(row["RecordId"]): json.dumps(wire_row(row), separators=(",", ":")) for row in rows}
        created = 0
        for chunk in _envelope_chunks(list(unique.items())):
            try:
                self._table.submit_transaction(self._queue_operations(table, chunk, at))
                created += len(chunk)
            except TableTransactionError:
                # Some were queued before (a redelivered activity): the others alone, each with its guard.
                for one in chunk:
                    with contextlib.suppress(TableTransactionError):
                        self._table.submit_transaction(self._queue_operations(table, [one], at))
                        created += 1
        return created

    @staticmethod
    def _queue_operations(table: LogTable, rows: Sequence[tuple[str, str]], at: datetime) -> list[Any]:
        text = "[" + ",".join(row for _, row in rows) + "]"
        digest = hashlib.sha256("\n".join(record for record, _ in rows).encode()).hexdigest()[:24]
        millis = int(at.timestamp() * 1000)
        envelope = {"PartitionKey": table.name, "RowKey": f"{ENVELOPE_PREFIX}{millis:015d}-{digest}",
                    "State": PENDING, "Queued": at, "Rows": len(rows), **split_property("Row", text)}
        guards = [{"PartitionKey": table.name, "RowKey": GUARD_PREFIX + record, "Queued": at,
                   "Envelope": envelope["RowKey"]} for record, _ in rows]
        return [("create", envelope), *(("create", guard) for guard in guards)]

    # -- sending --------------------------------------------------------------------------------

    def send_pending(self, attempt: str, now: datetime) -> SendReport:
        """Upload what waits, table by table; never raises for Log Analytics being away."""
        report = SendReport()
        for table in TABLES:
            if not self._send_table(table, attempt, now, report):
                break  # refused: Log Analytics is away, the next tables' rows wait too
        return report

    def _envelopes(self, table: LogTable, limit: int | None = None) -> list[Any]:
        found = self._table.query_entities(
            "PartitionKey eq @table and RowKey ge @start and RowKey lt @end",
            parameters={"table": table.name, "start": ENVELOPE_PREFIX, "end": _ENVELOPE_END},
        )
        return list(islice(found, limit))

    def _send_table(self, table: LogTable, attempt: str, now: datetime, report: SendReport) -> bool:
        """False when Log Analytics refused a call."""
        waiting = [e for e in self._envelopes(table, MAX_ENVELOPES_PER_SEND) if e["State"] != REJECTED]
        stale = [e for e in waiting if e["State"] == SENDING and _claimed(e) <= now - CLAIM_TIMEOUT]
        arrived: set[str] = set()
        if stale:
            ids = [str(row["RecordId"]) for e in stale for row in _rows(e)]
            try:
                arrived = self._arrived(table, ids)
            except Exception as error:  # noqa: BLE001 - unknown: leave them claimed, ask next time
                report.errors.append(f"{table.name}: looking up {len(ids)} rows: {error}"[:500])
                report.left += sum(_count(e) for e in waiting)
                return True
            report.found += len(arrived)
        candidates = [e for e in waiting if e["State"] == PENDING] + stale
        claimed = self._claim(candidates, attempt, now)
        claimed_keys = {e["RowKey"] for e in claimed}
        report.left += sum(_count(e) for e in waiting if e["RowKey"] not in claimed_keys)
        calls = list(_groups(claimed, len(claimed), MAX_CALL_BYTES - 2))
        while calls:
            call = calls.pop(0)
            rows = [row for e in call for row in _rows(e) if str(row["RecordId"]) not in arrived]
            try:
                refused = self._upload(table, rows)
            except _Refused as error:  # nothing of this call or the next was taken
                rest = [*call, *(e for later in calls for e in later)]
                self._release(rest)
                report.left += sum(_count(e) for e in rest)
                report.errors.append(f"{table.name}: {error}"[:500])
                return False
            except Exception as error:  # noqa: BLE001 - may have arrived: stays claimed, looked up later
                report.left += sum(_count(e) for e in call) + sum(_count(e) for later in calls for e in later)
                report.errors.append(f"{table.name}: {type(error).__name__}: {error}"[:500])
                return False
            for row, reason in refused:
                report.errors.append(f"{table.name} {row['RecordId']}: {reason}"[:500])
            self._set_aside(table, call, refused, now)
            report.sent += len(rows) - len(refused)
            report.rejected += len(refused)
        return True

    def _upload(self, table: LogTable, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
        """Send ``rows``; returns those Log Analytics refuses as rows (found by halving), with its answer."""
        if not rows:
            return []
        try:
            assert self._sink is not None, "a LogOutbox that sends needs a LogSink"
            self._sink.send_wire(table, rows, retry_total=UPLOAD_RETRIES)
            return []
        except HttpResponseError as error:
            if error.status_code not in ROWS_REFUSED:
                raise _Refused(error) from error
            if len(rows) == 1:
                return [(rows[0], f"{error.status_code} {error.message}")]
            half = len(rows) // 2
            return self._upload(table, rows[:half]) + self._upload(table, rows[half:])

    def _arrived(self, table: LogTable, record_ids: Sequence[str]) -> set[str]:
        assert self._lookup is not None, "a LogOutbox that sends needs a lookup"
        found: set[str] = set()
        for start in range(0, len(record_ids), LOOKUP_IDS):
            found |= self._lookup(table, record_ids[start:start + LOOKUP_IDS])
        return found

    def _claim(self, entities: Sequence[Any], attempt: str, now: datetime) -> list[dict[str, Any]]:
        """The envelopes this attempt claimed; a chunk another sender changed meanwhile is left to it."""
        claimed: list[dict[str, Any]] = []
        iterator = iter(entities)
        while chunk := list(islice(iterator, MAX_TRANSACTION_ENTITIES)):
            marks = [{"PartitionKey": e["PartitionKey"], "RowKey": e["RowKey"], "State": SENDING,
                      "Attempt": attempt, "Claimed": now} for e in chunk]  # fmt: skip
            try:
                self._table.submit_transaction([
                    ("update", mark, {"mode": UpdateMode.MERGE, "etag": e.metadata["etag"],
                                      "match_condition": MatchConditions.IfNotModified})
                    for mark, e in zip(marks, chunk, strict=True)
                ])  # fmt: skip
            except TableTransactionError:
                continue
            claimed += [dict(e) | mark for e, mark in zip(chunk, marks, strict=True)]
        return claimed

    def _set_aside(self, table: LogTable, call: Sequence[Mapping[str, Any]],
                   refused: Sequence[tuple[dict[str, Any], str]], now: datetime) -> None:
        """Delete the sent envelopes; the rows Log Analytics refused stay in a ``rejected`` envelope, with
        the answer, for an operator (State back to pending sends them again)."""
        if refused:
            text = json.dumps([row for row, _ in refused], separators=(",", ":"))
            first = call[0]
            self._table.upsert_entity({
                "PartitionKey": table.name, "RowKey": f"{first['RowKey']}-rejected", "State": REJECTED,
                "Queued": first.get("Queued"), "Rows": len(refused), "Rejected": now,
                "Error": "; ".join(reason for _, reason in refused)[:4000], **split_property("Row", text),
            })  # fmt: skip
        self._delete(call)

    def _release(self, entities: Iterable[Mapping[str, Any]]) -> None:
        iterator = iter(entities)
        while chunk := list(islice(iterator, MAX_TRANSACTION_ENTITIES)):
            self._table.submit_transaction([
                ("upsert", {"PartitionKey": e["PartitionKey"], "RowKey": e["RowKey"], "State": PENDING},
                 {"mode": UpdateMode.MERGE}) for e in chunk
            ])  # fmt: skip

    def _delete(self, entities: Iterable[Mapping[str, Any]]) -> None:
        iterator = iter(entities)
        while chunk := list(islice(iterator, MAX_TRANSACTION_ENTITIES)):
            keys = [{"PartitionKey": e["PartitionKey"], "RowKey": e["RowKey"]} for e in chunk]
            try:
                self._table.submit_transaction([("delete", key) for key in keys])
            except TableTransactionError:  # one is gone already (a second sender, a retry): one by one
                for key in keys:
                    with contextlib.suppress(ResourceNotFoundError):
                        self._table.delete_entity(key["PartitionKey"], key["RowKey"])

    def purge_sent(self, now: datetime) -> int:
        """Delete the tombstones of rows queued more than KEEP_SENT ago and sent; returns how many."""
        purged = 0
        for table in TABLES:
            waiting = {e["RowKey"] for e in self._envelopes(table)}
            old = self._table.query_entities(
                "PartitionKey eq @table and RowKey ge @start and RowKey lt @end and Queued lt @before",
                parameters={"table": table.name, "start": GUARD_PREFIX, "end": _GUARD_END,
                            "before": now - KEEP_SENT},
                select=["PartitionKey", "RowKey", "Envelope"],
            )
            gone = [e for e in old if e.get("Envelope") not in waiting]
            for start in range(0, len(gone), MAX_TRANSACTION_ENTITIES):
                chunk = gone[start:start + MAX_TRANSACTION_ENTITIES]
                self._table.submit_transaction([("delete", e) for e in chunk])
                purged += len(chunk)
        return purged

    # -- reading (tests, operators) -------------------------------------------------------------

    def states(self, table: LogTable) -> dict[str, str]:
        """RecordId -> state of every row queued for ``table`` (``sent`` once its envelope is gone)."""
        states = {str(e["RowKey"])[len(GUARD_PREFIX):]: SENT for e in self._table.query_entities(
            "PartitionKey eq @table and RowKey ge @start and RowKey lt @end",
            parameters={"table": table.name, "start": GUARD_PREFIX, "end": _GUARD_END}, select=["RowKey"])}
        for envelope in self._envelopes(table):
            for row in _rows(envelope):
                states[str(row["RecordId"])] = str(envelope["State"])
        return states


def _rows(envelope: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(json.loads(join_property(envelope, "Row")))


def _count(envelope: Mapping[str, Any]) -> int:
    return int(envelope.get("Rows") or 0)


def _envelope_chunks(rows: list[tuple[str, str]]) -> Iterable[list[tuple[str, str]]]:
    """(RecordId, JSON) in envelopes of at most MAX_ENVELOPE_ROWS rows and MAX_ENVELOPE_CHARS characters."""
    chunk: list[tuple[str, str]] = []
    size = 0
    for record, text in rows:
        if chunk and (len(chunk) == MAX_ENVELOPE_ROWS or size + len(text) + 1 > MAX_ENVELOPE_CHARS):
            yield chunk
            chunk, size = [], 0
        chunk.append((record, text))
        size += len(text) + 1
    if chunk:
        yield chunk


def _claimed(entity: Mapping[str, Any]) -> datetime:
    claimed = entity.get("Claimed")
    assert isinstance(claimed, datetime), f"outbox row {entity['RowKey']} is sending without a claim time"
    return claimed


def _groups(entities: Sequence[Any], max_count: int, max_bytes: int) -> Iterable[list[Any]]:
    """The entities in order, in groups of at most ``max_count`` whose rows' JSON (with a comma each)
    stays within ``max_bytes`` together; a row alone over ``max_bytes`` goes alone."""
    group: list[Any] = []
    size = 0
    for entity in entities:
        parts = int(entity.get("RowParts", 0))
        row_bytes = sum(len(str(entity[f"Row{n}"]).encode()) for n in range(parts)) + 1
        if group and (len(group) == max_count or size + row_bytes > max_bytes):
            yield group
            group, size = [], 0
        group.append(entity)
        size += row_bytes
    if group:
        yield group


# -- the app's outbox ---------------------------------------------------------------------------------


def log_outbox(settings: Settings, credential: TokenCredential | None = None) -> LogOutbox:
    """The outbox on the app's storage account, able to send to its data collection rule and look rows
    up in its workspace."""
    signer = credential or credential_for(settings)
    sink = LogSink(signer, settings.logs_ingestion_endpoint, settings.logs_dcr_immutable_id)
    reader = column_reader(signer, settings.logs_query_endpoint, settings.log_analytics_workspace_id,
                           "RecordId", LOOKUP_SPAN)

    def lookup(table: LogTable, record_ids: Sequence[str]) -> set[str]:
        ids = ", ".join(f"'{record_id}'" for record_id in record_ids)
        return set(reader(f"{table.name} | where RecordId in ({ids}) | distinct RecordId"))

    return LogOutbox(table_service(settings, signer), sink, lookup)
