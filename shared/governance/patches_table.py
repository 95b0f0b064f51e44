"""The patch inventory in Table Storage: every update version ever seen, its state per category, its history.

Table ``PatchInventory``, PartitionKey = :attr:`PatchRef.table_key` (``Windows|KB5034441``,
``Linux|openssl=3.0.2-0ubuntu1.12``): one partition holds everything about one update, so a state change
and its history row are one transaction. RowKeys:

- ``~patch``: the update's facts (title, classification, product, first seen, impact, references,
  justification), created when the assessment first sees it (:meth:`PatchInventory.record_first_seen`);
- ``c|<category>``: its state for one asset category (state, since, by, request, deferral, evidence
  counts); none means ``new``. Changed only under the ETag read (:meth:`PatchInventory.change`);
- ``h|<inverted milliseconds>|<seq>``: the append-only history, newest first: who, when, category, from,
  to, why, request. Never updated or deleted. ``seq`` is a digest of the move (category, action, actor),
  which keeps two moves of one millisecond apart without a counter to race on.

Each history row is also queued as a ``PatchInventory_CL`` row through the log outbox, after the
transaction (a crash in between loses the log row, never the history).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, TableTransactionError, UpdateMode

from shared.azure.log_outbox import LogOutbox, log_outbox
from shared.azure.tables import ensure_table, table_service
from shared.governance.patch_refs import PatchRef, PatchRefError, parse_table_key
from shared.governance.patches import (
    EVIDENCE_ACTIONS,
    EVIDENCE_ACTOR,
    FIRST_SEEN_ACTOR,
    Action,
    CategoryPatchStatus,
    EvidenceCounts,
    FactsEdit,
    HistoryEntry,
    Impact,
    InvalidTransition,
    PatchFacts,
    PatchState,
    initial_status,
    transition,
)
from shared.log_tables import PATCH_INVENTORY, record_id
from shared.principal import Role
from shared.settings import Settings

log = logging.getLogger(__name__)

PATCH_INVENTORY_TABLE = "PatchInventory"
FACTS_ROW = "~patch"
STATE_PREFIX, HISTORY_PREFIX = "c|", "h|"
_STATE_END, _HISTORY_END = "c}", "h}"  # "}" follows "|": the end of each RowKey range
_INVERTED_BASE_MS = 10**13  # above any millisecond timestamp before the year 2286 (as MachineUpdates)
# A state change that loses a race (another change of the same update and category since the read) is
# read again and the rules applied again; concurrent changes of one update are a handful at most.
MAX_CHANGE_ATTEMPTS = 5


class EditConflict(Exception):
    """The update changed since the ETag an edit was based on, or kept changing under a state change."""


class PatchNotFound(Exception):
    def __init__(self, ref: PatchRef) -> None:
        super().__init__(f"no update {ref.key} ({ref.os_type.value}) in the patch inventory")


@dataclass(frozen=True)
class PatchView:
    """An update's facts and its states in the categories that have one."""

    facts: PatchFacts
    statuses: tuple[CategoryPatchStatus, ...]

    def to_json(self) -> dict[str, Any]:
        return self.facts.to_json() | {"categories": [s.to_json() for s in self.statuses]}


def history_row_key(at: datetime, seq: str) -> str:
    millis = int(at.timestamp() * 1000)
    return f"{HISTORY_PREFIX}{_INVERTED_BASE_MS - millis:014d}|{seq}"


def _seq(*parts: str | None) -> str:
    return hashlib.sha256("|".join(p or "" for p in parts).encode()).hexdigest()[:8]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# --- entities ----------------------------------------------------------------------------------------


def _facts_entity(facts: PatchFacts) -> dict[str, Any]:
    ref = facts.ref
    return {
        "PartitionKey": ref.table_key, "RowKey": FACTS_ROW, "OsType": ref.os_type.value, "Key": ref.key,
        "KBID": ref.kb or "", "PackageName": ref.package or "", "PackageVersion": ref.version or "",
        "Title": facts.title or "", "Classification": facts.classification or "",
        "Product": facts.product or "",
        "FirstSeen": facts.first_seen, "MachinesNeeding": facts.machines_needing_at_first_seen,
        "Impact": json.dumps(facts.impact.model_dump(by_alias=True, mode="json"), separators=(",", ":")),
        "References": json.dumps(list(facts.references), separators=(",", ":")),
        "Justification": facts.justification or "", "Modified": facts.modified,
        "ModifiedBy": facts.modified_by or "",
    }  # fmt: skip


def _facts(ref: PatchRef, entity: Mapping[str, Any] | None) -> PatchFacts:
    if entity is None:
        return PatchFacts(ref)
    etag = getattr(entity, "metadata", {}).get("etag")
    return PatchFacts(
        ref=ref,
        title=entity.get("Title") or None,
        classification=entity.get("Classification") or None,
        product=entity.get("Product") or None,
        first_seen=entity.get("FirstSeen"),
        machines_needing_at_first_seen=entity.get("MachinesNeeding"),
        impact=Impact.model_validate(json.loads(entity.get("Impact") or "{}")),
        references=tuple(json.loads(entity.get("References") or "[]")),
        justification=entity.get("Justification") or None,
        modified=entity.get("Modified"),
        modified_by=entity.get("ModifiedBy") or None,
        etag=etag,
    )


def _status_entity(status: CategoryPatchStatus) -> dict[str, Any]:
    return {
        "PartitionKey": status.ref.table_key, "RowKey": f"{STATE_PREFIX}{status.category}",
        "OsType": status.ref.os_type.value, "Key": status.ref.key, "Category": status.category,
        "State": status.state.value, "Since": status.since, "By": status.by or "",
        "Justification": status.justification or "", "DeferUntil": status.defer_until,
        "RequestedBy": status.requested_by or "", "RequestId": status.request_id or "",
        "EvidenceInstalled": status.evidence.installed, "EvidenceFailed": status.evidence.failed,
        "BakedSince": status.evidence.baked_since,
    }  # fmt: skip


def _status(ref: PatchRef, entity: Mapping[str, Any]) -> CategoryPatchStatus:
    return CategoryPatchStatus(
        ref=ref,
        category=str(entity["Category"]),
        state=PatchState(entity["State"]),
        since=entity.get("Since"),
        by=entity.get("By") or None,
        justification=entity.get("Justification") or None,
        defer_until=entity.get("DeferUntil"),
        requested_by=entity.get("RequestedBy") or None,
        request_id=entity.get("RequestId") or None,
        evidence=EvidenceCounts(int(entity.get("EvidenceInstalled") or 0),
                                int(entity.get("EvidenceFailed") or 0), entity.get("BakedSince")),
        etag=getattr(entity, "metadata", {}).get("etag"),
    )


def _history_entity(entry: HistoryEntry) -> dict[str, Any]:
    seq = _seq(entry.category, entry.action.value, entry.by, entry.request_id)
    return {
        "PartitionKey": entry.ref.table_key, "RowKey": history_row_key(entry.at, seq),
        "OsType": entry.ref.os_type.value, "Key": entry.ref.key, "Category": entry.category,
        "At": entry.at, "By": entry.by, "Action": entry.action.value,
        "From": entry.from_state.value if entry.from_state else "",
        "To": entry.to_state.value if entry.to_state else "",
        "Justification": entry.justification or "", "RequestId": entry.request_id or "",
        "DeferUntil": entry.defer_until,
    }  # fmt: skip


def _history(ref: PatchRef, entity: Mapping[str, Any]) -> HistoryEntry:
    return HistoryEntry(
        ref=ref,
        category=str(entity.get("Category") or ""),
        at=entity["At"],
        by=str(entity["By"]),
        action=Action(entity["Action"]),
        from_state=PatchState(entity["From"]) if entity.get("From") else None,
        to_state=PatchState(entity["To"]) if entity.get("To") else None,
        justification=entity.get("Justification") or None,
        request_id=entity.get("RequestId") or None,
        defer_until=entity.get("DeferUntil"),
    )


def log_row(entry: HistoryEntry, facts: PatchFacts, row_key: str) -> dict[str, Any]:
    """The ``PatchInventory_CL`` row of one history row."""
    ref = entry.ref
    return {
        "TimeGenerated": entry.at, "RecordId": record_id(ref.table_key, row_key), "OSType": ref.os_type.value,
        "PatchKey": ref.key, "KBID": ref.kb or "", "PackageName": ref.package or "",
        "PackageVersion": ref.version or "", "UpdateTitle": facts.title or "",
        "Classification": facts.classification or "", "Product": facts.product or "",
        "AssetCategory": entry.category, "Action": entry.action.value,
        "FromState": entry.from_state.value if entry.from_state else "",
        "ToState": entry.to_state.value if entry.to_state else "", "ChangedBy": entry.by,
        "Justification": entry.justification or "", "RequestId": entry.request_id or "",
        "DeferUntil": entry.defer_until,
    }  # fmt: skip


# --- the store ---------------------------------------------------------------------------------------


class PatchInventory:
    def __init__(self, service: TableServiceClient, outbox: LogOutbox) -> None:
        self._service = service
        self._table: TableClient = service.get_table_client(PATCH_INVENTORY_TABLE)
        self._outbox = outbox

    def ensure(self) -> None:
        ensure_table(self._service, PATCH_INVENTORY_TABLE)

    # -- facts ---------------------------------------------------------------------------------------

    def facts(self, ref: PatchRef) -> PatchFacts:
        """The update's facts; :class:`PatchNotFound` when it was never seen nor changed."""
        try:
            return _facts(ref, self._table.get_entity(ref.table_key, FACTS_ROW))
        except ResourceNotFoundError:
            raise PatchNotFound(ref) from None

    def facts_or_none(self, ref: PatchRef) -> PatchFacts | None:
        try:
            return self.facts(ref)
        except PatchNotFound:
            return None

    def record_first_seen(self, facts: PatchFacts) -> bool:
        """Create the update's ``~patch`` row (and its first history row) unless it exists: True when this
        sighting created it (also when a retry of it finds the row it made: same ``first_seen``, so what
        follows the creation, a notification, happens on the retry too). Idempotent."""
        at = facts.first_seen or datetime.now(UTC)
        entry = HistoryEntry(ref=facts.ref, category="", at=at, by=FIRST_SEEN_ACTOR, action=Action.FIRST_SEEN,
                             from_state=None, to_state=None,
                             justification=f"{facts.machines_needing_at_first_seen or 0} machine(s) need it")
        history = _history_entity(entry)
        try:
            self._table.submit_transaction([("create", _facts_entity(facts)), ("upsert", history)])
        except TableTransactionError:
            try:
                existing = self._table.get_entity(facts.ref.table_key, FACTS_ROW)
            except ResourceNotFoundError:
                raise
            return existing.get("FirstSeen") == at
        self._queue([(entry, history["RowKey"])], facts, at)
        return True

    def edit_facts(self, ref: PatchRef, edit: FactsEdit, by: str, at: datetime,
                   etag: str | None) -> PatchFacts:
        """Apply an operator's edit if the row still has ``etag`` (the one read just before when None)."""
        current = self.facts(ref)
        edited = current.edited(edit, by, at)
        given = ", ".join(sorted(edit.given()))
        entry = HistoryEntry(ref=ref, category="", at=at, by=by, action=Action.EDIT, from_state=None,
                             to_state=None, justification=f"edited {given}")
        history = _history_entity(entry)
        options = {"mode": UpdateMode.REPLACE, "etag": etag or current.etag,
                   "match_condition": MatchConditions.IfNotModified}
        try:
            self._table.submit_transaction([("update", _facts_entity(edited), options), ("upsert", history)])
        except TableTransactionError as error:
            raise EditConflict(f"{ref.key} changed since ETag {etag or current.etag}; read it again and "
                               "reapply the edit") from error
        self._queue([(entry, history["RowKey"])], edited, at)
        return self.facts(ref)

    # -- states --------------------------------------------------------------------------------------

    def state(self, ref: PatchRef, category: str) -> CategoryPatchStatus:
        """The update's state in ``category`` (``new`` when nothing moved it there yet)."""
        try:
            return _status(ref, self._table.get_entity(ref.table_key, f"{STATE_PREFIX}{category}"))
        except ResourceNotFoundError:
            return initial_status(ref, category)

    def states(self, ref: PatchRef) -> list[CategoryPatchStatus]:
        query = "PartitionKey eq @p and RowKey ge @start and RowKey lt @end"
        parameters = {"p": ref.table_key, "start": STATE_PREFIX, "end": _STATE_END}
        return sorted((_status(ref, e) for e in self._table.query_entities(query, parameters=parameters)),
                      key=lambda s: s.category)

    def history(self, ref: PatchRef, category: str | None = None) -> list[HistoryEntry]:
        """Newest first; with ``category``, that category's moves only."""
        query = "PartitionKey eq @p and RowKey ge @start and RowKey lt @end"
        parameters: dict[str, Any] = {"p": ref.table_key, "start": HISTORY_PREFIX, "end": _HISTORY_END}
        if category is not None:
            query += " and Category eq @c"
            parameters["c"] = category
        return [_history(ref, e) for e in self._table.query_entities(query, parameters=parameters)]

    def change(
        self,
        ref: PatchRef,
        category: str,
        action: Action,
        by: str,
        at: datetime,
        justification: str | None = None,
        *,
        roles: Collection[Role] = (),
        defer_until: datetime | None = None,
        request_id: str | None = None,
        evidence: EvidenceCounts | None = None,
        expect: Callable[[CategoryPatchStatus], None] | None = None,
    ) -> CategoryPatchStatus:
        """Move the update's state in ``category`` by the rules (:func:`transition`), and append the move
        to its history, in one transaction guarded by the state row's ETag. A lost race reads again and
        applies the rules again (so a decision on a request someone else just decided is refused).
        ``expect``: a further check of the current status (raises to refuse), run before the rules."""
        for _ in range(MAX_CHANGE_ATTEMPTS):
            status, facts_entity = self._read_for_change(ref, category)
            if expect is not None:
                expect(status)
            new_status, entry = transition(status, action, by, at, justification, roles=roles,
                                           defer_until=defer_until, request_id=request_id, evidence=evidence)
            if self._commit(status, new_status, entry, facts_entity):
                return self.state(ref, category)
        raise EditConflict(
            f"{ref.key} in {category!r} changed under {MAX_CHANGE_ATTEMPTS} attempts; try again"
        )

    def _read_for_change(self, ref: PatchRef, category: str) -> tuple[CategoryPatchStatus, Any | None]:
        query = "PartitionKey eq @p and ( RowKey eq @c or RowKey eq @f )"
        parameters = {"p": ref.table_key, "c": f"{STATE_PREFIX}{category}", "f": FACTS_ROW}
        status, facts = initial_status(ref, category), None
        for entity in self._table.query_entities(query, parameters=parameters):
            if entity["RowKey"] == FACTS_ROW:
                facts = entity
            else:
                status = _status(ref, entity)
        return status, facts

    def _commit(self, before: CategoryPatchStatus, after: CategoryPatchStatus, entry: HistoryEntry,
                facts_entity: Any | None) -> bool:
        """Write the state and its history row together; False when the state changed since it was read."""
        history = _history_entity(entry)
        operations: list[Any] = []
        if before.etag is None:
            operations.append(("create", _status_entity(after)))
        else:
            guard = {"mode": UpdateMode.REPLACE, "etag": before.etag,
                     "match_condition": MatchConditions.IfNotModified}
            operations.append(("update", _status_entity(after), guard))
        if facts_entity is None:
            # Moved before the assessment saw it (evidence of a deployment's own list): keep it listable.
            operations.append(("create", _facts_entity(PatchFacts(entry.ref, first_seen=entry.at))))
        operations.append(("create", history))
        try:
            self._table.submit_transaction(operations)
        except TableTransactionError:
            return False
        facts = _facts(entry.ref, facts_entity) if facts_entity is not None else PatchFacts(entry.ref)
        self._queue([(entry, history["RowKey"])], facts, entry.at)
        return True

    def record_evidence_result(
        self,
        ref: PatchRef,
        category: str,
        result: PatchState | str,
        reason: str | None,
        at: datetime,
        evidence: EvidenceCounts | None = None,
    ) -> CategoryPatchStatus:
        """Record what the test ring showed (``in test``, ``passed`` or ``failed`` with its reason) as
        :data:`EVIDENCE_ACTOR`. The same result again changes nothing (no history row); a result for an
        update already decided (approved, rejected) is not a change of its state and is left out (logged)."""
        wanted = PatchState(result)
        if wanted not in EVIDENCE_ACTIONS:
            raise ValueError(f"result: evidence records {', '.join(EVIDENCE_ACTIONS)}, not {wanted.value!r}")
        current = self.state(ref, category)
        if current.state is wanted:
            return current
        try:
            return self.change(ref, category, EVIDENCE_ACTIONS[wanted], EVIDENCE_ACTOR, at, reason,
                               evidence=evidence)
        except InvalidTransition as refused:
            log.info("evidence %s for %s in %s left out: %s", wanted.value, ref.key, category, refused)
            return self.state(ref, category)

    # -- reads across updates ------------------------------------------------------------------------

    def approved(self, category: str, on: datetime | None = None) -> set[PatchRef]:
        """What was approved for ``category`` at ``on`` (now when None). The past is read from the history:
        for each update, its last move in the category at or before ``on``."""
        if on is None:
            query = "RowKey eq @c and State eq @s"
            entities = self._table.query_entities(
                query, parameters={"c": f"{STATE_PREFIX}{category}", "s": PatchState.APPROVED.value},
                select=["PartitionKey"])
            return {ref for e in entities if (ref := _ref(e["PartitionKey"])) is not None}
        if on.tzinfo is None:
            raise ValueError("on: a time with its zone (UTC)")
        query = "RowKey ge @start and RowKey lt @end and Category eq @c and At le @on"
        parameters = {"start": HISTORY_PREFIX, "end": _HISTORY_END, "c": category, "on": on}
        latest: dict[str, tuple[datetime, str]] = {}
        for e in self._table.query_entities(query, parameters=parameters,
                                            select=["PartitionKey", "RowKey", "At", "To"]):
            key, at = str(e["PartitionKey"]), e["At"]
            # RowKeys sort newest first; within a millisecond the first read is kept.
            if key not in latest or at > latest[key][0]:
                latest[key] = (at, str(e["To"]))
        return {ref for key, (_, to) in latest.items()
                if to == PatchState.APPROVED.value and (ref := _ref(key)) is not None}

    def statuses_in(self, category: str, states: Collection[PatchState] = ()) -> list[CategoryPatchStatus]:
        """Every update's status in ``category`` that has one (of ``states`` when given)."""
        found = []
        for e in self._table.query_entities("RowKey eq @c", parameters={"c": f"{STATE_PREFIX}{category}"}):
            ref = _ref(e["PartitionKey"])
            if ref is not None and (not states or e["State"] in states):
                found.append(_status(ref, e))
        return found

    def list(self, os_type: str | None = None, category: str | None = None,
             state: PatchState | None = None, classification: str | None = None) -> list[PatchView]:
        """Every update's facts and states, filtered. With ``category`` and ``state`` ``new``, updates with
        no move in the category are listed too (that is what ``new`` means)."""
        query, parameters = "RowKey eq @f", {"f": FACTS_ROW}
        if os_type:
            query += " and OsType eq @os"
            parameters["os"] = os_type
        facts: dict[str, Any] = {str(e["PartitionKey"]): e
                                 for e in self._table.query_entities(query, parameters=parameters)}
        state_query = "RowKey ge @start and RowKey lt @end"
        state_parameters = {"start": STATE_PREFIX, "end": _STATE_END}
        if category:
            state_query, state_parameters = "RowKey eq @c", {"c": f"{STATE_PREFIX}{category}"}
        statuses: dict[str, list[CategoryPatchStatus]] = defaultdict(list)
        for e in self._table.query_entities(state_query, parameters=state_parameters):
            key = str(e["PartitionKey"])
            if key in facts and (ref := _ref(key)) is not None:
                statuses[key].append(_status(ref, e))
        views = []
        for key, entity in facts.items():
            ref = _ref(key)
            if ref is None:
                continue
            view = PatchView(_facts(ref, entity), tuple(sorted(statuses[key], key=lambda s: s.category)))
            if classification and (view.facts.classification or "").casefold() != classification.casefold():
                continue
            if state is not None:
                shown = view.statuses or ((initial_status(ref, category),) if category else ())
                if not any(s.state is state for s in shown):
                    continue
            if category and not view.statuses:
                view = PatchView(view.facts, (initial_status(ref, category),))
            views.append(view)
        return sorted(views, key=lambda v: (v.facts.ref.os_type.value, v.facts.ref.key))

    # -- the log ---------------------------------------------------------------------------------------

    def _queue(self, entries: Iterable[tuple[HistoryEntry, str]], facts: PatchFacts, at: datetime) -> None:
        rows = [log_row(entry, facts, row_key) for entry, row_key in entries]
        try:
            self._outbox.put(PATCH_INVENTORY, rows, at)
        except AzureError:  # the history is kept; its log copy is not worth failing a made change for
            log.exception("PatchInventory_CL rows for %s not queued", facts.ref.key)


def _ref(table_key: str) -> PatchRef | None:
    try:
        return parse_table_key(table_key)
    except PatchRefError:
        log.warning("PatchInventory partition %r is not a patch reference; skipped", table_key)
        return None


def patch_inventory(settings: Settings) -> PatchInventory:
    inventory = PatchInventory(table_service(settings), log_outbox(settings))
    inventory.ensure()
    return inventory

