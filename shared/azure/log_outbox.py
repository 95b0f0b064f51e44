"""Log Analytics rows through an outbox in Table Storage: written with the inventory, sent later.

An activity that records something puts its rows here (:meth:`LogOutbox.put`) in the same step as
the inventory, and returns; a sender (:meth:`LogOutbox.send_pending`, after each batch and on a
timer) uploads them in calls of at most 1 MB and marks them sent. A Log Analytics outage then delays
rows and never fails an activity, so it never decides whether a machine gets patched.

Layout: table ``LogOutbox``, PartitionKey the Log Analytics table (``Update_CL``, ...), RowKey the
row's ``RecordId``; ``State`` is ``pending``, ``sending`` (claimed by the sender ``Attempt`` at
``Claimed``) or ``sent`` (the row's text dropped, the entity kept as a tombstone); the row is JSON in
``Row0``, ``Row1``, ... (:func:`split_property`).

At most once per RecordId:

* ``put`` only creates: a redelivered activity finds its rows there (pending, sending or sent) and
  changes nothing, so it never queues a row again.
* A sender claims rows (pending -> sending) with the ETag it read, in transactions: of two senders
  at once, one wins each row and the other skips it.
* It uploads the claimed rows, then marks them sent. An answer with a status (429, 503, ...) means the
  call was refused: its rows go back to pending. Any other failure (connection lost, host killed)
  leaves them ``sending``: they may have arrived.
* A row still ``sending`` after :data:`CLAIM_TIMEOUT` (its sender died between upload and mark, or
  lost the answer) is looked up in Log Analytics by RecordId before anything else: found, it is marked
  sent; absent, it is sent again. The timeout exceeds ingestion latency, so a row that arrived is
  visible by then (see CLAIM_TIMEOUT).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError
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
# Answers that refuse the rows themselves (the Logs Ingestion API's InvalidContent, RequestEntityTooLarge):
# sending them again cannot help, and one such row must not hold back the others.
ROWS_REFUSED = frozenset({400, 413})
# Logs Ingestion API: 1 MB per call (AZURE-FACTS). Counted on the JSON text before gzip, with room
# for the list's brackets and commas.
MAX_CALL_BYTES = 1_000_000
# A sender claims at most this many rows per table and call, so one activity stays well inside the
# Functions timeout (about a second per 1 MB call); the rest waits for the next call.
MAX_ROWS_PER_SEND = 20_000
# A claim older than this belongs to a sender that died or lost its answer. Azure Monitor's ingestion
# latency is typically under 3 minutes ("Log data ingestion time in Azure Monitor"); 30 minutes
# leaves a wide margin before a row that did arrive is looked up.
CLAIM_TIMEOUT = timedelta(minutes=30)
# RecordIds per Log Analytics lookup query (32 characters each: the query stays a few KB).
LOOKUP_IDS = 500
# How far back a lookup reaches, on TimeGenerated: a row may wait through an outage of days.
LOOKUP_SPAN = timedelta(days=30)
# A table transaction is under 4 MiB (AZURE-FACTS): queued rows go in transactions of at most 3 MB of
# row text (rows of tens of KB would otherwise fill 100 entities past the limit).
MAX_TRANSACTION_ROW_BYTES = 3_000_000
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
        entities = [self._entity(table, row, at) for row in rows]
        created = 0
        for chunk in _groups(entities, MAX_TRANSACTION_ENTITIES, MAX_TRANSACTION_ROW_BYTES):
            try:
                self._table.submit_transaction([("create", e) for e in chunk])
                created += len(chunk)
            except TableTransactionError:
                # Some were queued before (a redelivered activity): create the others one by one.
                for entity in chunk:
                    with contextlib.suppress(ResourceExistsError):
                        self._table.create_entity(entity)
                        created += 1
        return created

    @staticmethod
    def _entity(table: LogTable, row: Mapping[str, Any], at: datetime) -> dict[str, Any]:
        record_id = str(row["RecordId"])
        text = json.dumps(wire_row(row), separators=(",", ":"))
        return {"PartitionKey": table.name, "RowKey": record_id, "State": PENDING, "Queued": at,
                **split_property("Row", text)}

    # -- sending --------------------------------------------------------------------------------

    def send_pending(self, attempt: str, now: datetime) -> SendReport:
        """Upload what waits, table by table; never raises for Log Analytics being away."""
        report = SendReport()
        for table in TABLES:
            if not self._send_table(table, attempt, now, report):
                break  # refused: Log Analytics is away, the next tables' rows wait too
        return report

    def _send_table(self, table: LogTable, attempt: str, now: datetime, report: SendReport) -> bool:
        """False when Log Analytics refused a call."""
        waiting = list(islice(self._table.query_entities(
            # (spaces around the brackets: azure-data-tables finds a parameter by the word after "@")
            "PartitionKey eq @table and ( State eq @pending or State eq @sending )",
            parameters={"table": table.name, "pending": PENDING, "sending": SENDING},
        ), MAX_ROWS_PER_SEND))  # fmt: skip
        stale = [e for e in waiting if e["State"] == SENDING and _claimed(e) <= now - CLAIM_TIMEOUT]
        found: list[Any] = []
        if stale:
            try:
                arrived = self._arrived(table, [e["RowKey"] for e in stale])
            except Exception as error:  # noqa: BLE001 - unknown: leave them claimed, ask next time
                report.errors.append(f"{table.name}: looking up {len(stale)} rows: {error}"[:500])
                report.left += len(waiting)
                return True
            found = [e for e in stale if e["RowKey"] in arrived]
            self._mark_sent(found, now)
            report.found += len(found)
            stale = [e for e in stale if e["RowKey"] not in arrived]
        candidates = [e for e in waiting if e["State"] == PENDING] + stale
        claimed = self._claim(candidates, attempt, now)
        # Rows claimed by a live sender, or whose claim another sender won meanwhile.
        report.left += len(waiting) - len(claimed) - len(found)
        calls = list(_groups(claimed, len(claimed), MAX_CALL_BYTES - 2))
        while calls:
            call = calls.pop(0)
            rows = [json.loads(join_property(e, "Row")) for e in call]
            try:
                assert self._sink is not None, "a LogOutbox that sends needs a LogSink"
                self._sink.send_wire(table, rows, retry_total=UPLOAD_RETRIES)
            except HttpResponseError as error:
                if error.status_code in ROWS_REFUSED:
                    if len(call) > 1:  # find the refused rows: halves, sent again
                        calls[:0] = [call[:len(call) // 2], call[len(call) // 2:]]
                    else:
                        self._reject(call, f"{error.status_code} {error.message}", now)
                        report.rejected += 1
                        report.errors.append(f"{table.name} {call[0]['RowKey']}: {error.status_code} "
                                             f"{error.reason}"[:500])
                    continue
                # Refused (an answer came): nothing of this call or the next was taken.
                rest = [*call, *(e for later in calls for e in later)]
                self._release(rest)
                report.left += len(rest)
                report.errors.append(f"{table.name}: {error.status_code} {error.reason}"[:500])
                return False
            except Exception as error:  # noqa: BLE001 - may have arrived: stays claimed, looked up later
                report.left += len(call) + sum(len(later) for later in calls)
                report.errors.append(f"{table.name}: {type(error).__name__}: {error}"[:500])
                return False
            self._mark_sent(call, now)
            report.sent += len(call)
        return True

    def _arrived(self, table: LogTable, record_ids: Sequence[str]) -> set[str]:
        assert self._lookup is not None, "a LogOutbox that sends needs a lookup"
        found: set[str] = set()
        for start in range(0, len(record_ids), LOOKUP_IDS):
            found |= self._lookup(table, record_ids[start:start + LOOKUP_IDS])
        return found

    def _claim(self, entities: Sequence[Any], attempt: str, now: datetime) -> list[dict[str, Any]]:
        """The entities this attempt claimed; a chunk another sender changed meanwhile is left to it."""
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

    def _reject(self, entities: Iterable[Mapping[str, Any]], error: str, now: datetime) -> None:
        # Kept with its text and the answer, for an operator (State back to pending sends it again).
        self._write_state(entities, {"State": REJECTED, "Error": error[:4000], "Rejected": now},
                          UpdateMode.MERGE)

    def _release(self, entities: Iterable[Mapping[str, Any]]) -> None:
        self._write_state(entities, {"State": PENDING}, UpdateMode.MERGE)

    def _mark_sent(self, entities: Iterable[Mapping[str, Any]], now: datetime) -> None:
        # REPLACE drops the row's text: the tombstone only keeps the RecordId from being queued again.
        self._write_state(entities, {"State": SENT, "Sent": now}, UpdateMode.REPLACE)

    def _write_state(self, entities: Iterable[Mapping[str, Any]], values: Mapping[str, Any],
                     mode: UpdateMode) -> None:
        iterator = iter(entities)
        while chunk := list(islice(iterator, MAX_TRANSACTION_ENTITIES)):
            keys = [{"PartitionKey": e["PartitionKey"], "RowKey": e["RowKey"]} for e in chunk]
            self._table.submit_transaction([("upsert", key | dict(values), {"mode": mode}) for key in keys])

    def purge_sent(self, now: datetime) -> int:
        """Delete the tombstones of rows sent more than KEEP_SENT ago; returns how many."""
        purged = 0
        for table in TABLES:
            old = self._table.query_entities(
                "PartitionKey eq @table and State eq @sent and Sent lt @before",
                parameters={"table": table.name, "sent": SENT, "before": now - KEEP_SENT},
                select=["PartitionKey", "RowKey"],
            )
            for chunk in _groups(list(old), MAX_TRANSACTION_ENTITIES, MAX_TRANSACTION_ROW_BYTES):
                self._table.submit_transaction([("delete", e) for e in chunk])
                purged += len(chunk)
        return purged

    # -- reading (tests, operators) -------------------------------------------------------------

    def states(self, table: LogTable) -> dict[str, str]:
        """RecordId -> state of every row queued for ``table``."""
        return {e["RowKey"]: e["State"] for e in self._table.query_entities(
            "PartitionKey eq @table", parameters={"table": table.name}, select=["RowKey", "State"])}


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
