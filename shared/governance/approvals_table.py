"""Approval requests in Table Storage: who asked for which updates of which category, and the decision.

Table ``ApprovalRequests``: one partition (a few requests a day per category; the queue is listed whole),
RowKey = the request id, ``apr-<UTC yyyymmddHHMMSS>-<8 hex>`` (sorts by time, unique without a counter).
The updates of a request (up to a release's 1,000) are JSON over ``Patches0``, ``Patches1``, ...
(split_property). A decision replaces the entity under the ETag read, so of two approvers deciding at
once one wins and the other is told the request was decided.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.data.tables import TableServiceClient, UpdateMode

from shared.azure.tables import ensure_table, is_table_key, join_property, split_property, table_service
from shared.governance.patch_refs import PatchRef, parse_patch_ref
from shared.settings import Settings

APPROVAL_REQUESTS_TABLE = "ApprovalRequests"
PARTITION = "request"


class RequestState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    DEFERRED = "deferred"


class Skipped(NamedTuple):
    """An update of a request left out: by the request (already authorized or approved) or by a decision
    (no longer awaiting it); ``state`` its state then, when known."""

    ref: PatchRef
    reason: str
    state: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"osType": self.ref.os_type.value, "key": self.ref.key, "state": self.state,
                "reason": self.reason}


@dataclass(frozen=True)
class Revocation:
    """An approval of the request taken back: the decision it undid, and who revoked it, when and why."""

    decided_by: str
    decided_at: datetime | None
    decision_justification: str | None
    revoked_by: str
    revoked_at: datetime
    justification: str

    def to_json(self) -> dict[str, Any]:
        return {"decidedBy": self.decided_by,
                "decidedAt": self.decided_at.isoformat() if self.decided_at else None,
                "decisionJustification": self.decision_justification, "revokedBy": self.revoked_by,
                "revokedAt": self.revoked_at.isoformat(), "justification": self.justification}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Revocation:
        decided = data.get("decidedAt")
        return Revocation(str(data["decidedBy"]), datetime.fromisoformat(decided) if decided else None,
                          data.get("decisionJustification"), str(data["revokedBy"]),
                          datetime.fromisoformat(data["revokedAt"]), str(data["justification"]))


class RequestNotFound(Exception):
    def __init__(self, request_id: str) -> None:
        super().__init__(f"no approval request {request_id!r}")


class RequestChanged(Exception):
    """The request was decided (or changed) since it was read."""


@dataclass(frozen=True)
class ApprovalRequest:
    request_id: str
    category: str
    patches: tuple[PatchRef, ...]
    requested_by: str
    requested_at: datetime
    justification: str
    release: str | None = None
    state: RequestState = RequestState.PENDING
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_justification: str | None = None
    defer_until: datetime | None = None
    # Updates the request left out (already authorized or approved when requested) or a decision left
    # alone (no longer awaiting it: failed testing since, ...).
    skipped: tuple[Skipped, ...] = ()
    # Approvals of this request taken back, oldest first (the request is pending again after each).
    revocations: tuple[Revocation, ...] = ()
    etag: str | None = None

    def awaiting(self, now: datetime) -> bool:
        """Waiting for an approver: pending, or deferred to a date that has come."""
        if self.state is RequestState.PENDING:
            return True
        until = self.defer_until
        return self.state is RequestState.DEFERRED and until is not None and until <= now

    def decided(self, state: RequestState, by: str, at: datetime, justification: str,
                defer_until: datetime | None, skipped: Sequence[Skipped]) -> ApprovalRequest:
        return replace(self, state=state, decided_by=by, decided_at=at, decision_justification=justification,
                       defer_until=defer_until, skipped=tuple(skipped))

    def revoked(self, by: str, at: datetime, justification: str,
                skipped: Sequence[Skipped]) -> ApprovalRequest:
        """Its approval taken back: pending again (its updates are authorized again), the decision kept
        under ``revocations``."""
        undone = Revocation(self.decided_by or "", self.decided_at, self.decision_justification, by, at,
                            justification)
        return replace(self, state=RequestState.PENDING, decided_by=None, decided_at=None,
                       decision_justification=None, defer_until=None,
                       skipped=(*self.skipped, *skipped), revocations=(*self.revocations, undone))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "category": self.category,
            "release": self.release,
            "patches": [{"osType": p.os_type.value, "key": p.key} for p in self.patches],
            "requestedBy": self.requested_by,
            "requestedAt": self.requested_at.isoformat(),
            "justification": self.justification,
            "state": self.state.value,
            "decidedBy": self.decided_by,
            "decidedAt": self.decided_at.isoformat() if self.decided_at else None,
            "decisionJustification": self.decision_justification,
            "deferUntil": self.defer_until.isoformat() if self.defer_until else None,
            "skipped": [s.to_json() for s in self.skipped],
            "revocations": [r.to_json() for r in self.revocations],
            "link": f"/api/approvals/{self.request_id}",
        }


def _entity(request: ApprovalRequest) -> dict[str, Any]:
    patches = json.dumps([[p.os_type.value, p.key] for p in request.patches], separators=(",", ":"))
    skipped = json.dumps([[s.ref.os_type.value, s.ref.key, s.reason, s.state] for s in request.skipped],
                         separators=(",", ":"))
    revocations = json.dumps([r.to_json() for r in request.revocations], separators=(",", ":"))
    return {
        "PartitionKey": PARTITION, "RowKey": request.request_id, "Category": request.category,
        "Release": request.release or "", "RequestedBy": request.requested_by,
        "RequestedAt": request.requested_at, "Justification": request.justification,
        "State": request.state.value, "DecidedBy": request.decided_by or "", "DecidedAt": request.decided_at,
        "DecisionJustification": request.decision_justification or "", "DeferUntil": request.defer_until,
        "PatchCount": len(request.patches), **split_property("Patches", patches),
        **split_property("Skipped", skipped),
        **split_property("Revocations", revocations),
    }  # fmt: skip


def _request(entity: Any) -> ApprovalRequest:
    patches = tuple(parse_patch_ref(os, key) for os, key in json.loads(join_property(entity, "Patches")))
    # [os, key, why] (written before skipped updates had their state) or [os, key, why, state].
    skipped = tuple(Skipped(parse_patch_ref(item[0], item[1]), item[2], item[3] if len(item) > 3 else None)
                    for item in json.loads(join_property(entity, "Skipped") or "[]"))
    # Requests stored before revocations existed have no such column.
    revoked = join_property(entity, "Revocations") if "RevocationsParts" in entity else "[]"
    revocations = tuple(Revocation.from_json(r) for r in json.loads(revoked or "[]"))
    return ApprovalRequest(
        request_id=str(entity["RowKey"]), category=str(entity["Category"]), patches=patches,
        requested_by=str(entity["RequestedBy"]), requested_at=entity["RequestedAt"],
        justification=str(entity.get("Justification") or ""), release=entity.get("Release") or None,
        state=RequestState(entity["State"]), decided_by=entity.get("DecidedBy") or None,
        decided_at=entity.get("DecidedAt"),
        decision_justification=entity.get("DecisionJustification") or None,
        defer_until=entity.get("DeferUntil"), skipped=skipped, revocations=revocations,
        etag=entity.metadata.get("etag"),
    )  # fmt: skip


class ApprovalStore:
    def __init__(self, service: TableServiceClient) -> None:
        self._service = service
        self._table = service.get_table_client(APPROVAL_REQUESTS_TABLE)

    def ensure(self) -> None:
        ensure_table(self._service, APPROVAL_REQUESTS_TABLE)

    def create(self, request: ApprovalRequest) -> ApprovalRequest:
        self._table.create_entity(_entity(request))
        return self.get(request.request_id)

    def get(self, request_id: str) -> ApprovalRequest:
        if not is_table_key(request_id):
            raise RequestNotFound(request_id)
        try:
            return _request(self._table.get_entity(PARTITION, request_id))
        except ResourceNotFoundError:
            raise RequestNotFound(request_id) from None

    def list(self, states: Sequence[RequestState] = (), category: str | None = None) -> list[ApprovalRequest]:
        """Newest first."""
        query, parameters = "PartitionKey eq @p", {"p": PARTITION}
        if category:
            query += " and Category eq @c"
            parameters["c"] = category
        found = [_request(e) for e in self._table.query_entities(query, parameters=parameters)]
        return sorted((r for r in found if not states or r.state in states),
                      key=lambda r: r.requested_at, reverse=True)

    def replace(self, request: ApprovalRequest) -> ApprovalRequest:
        """Write ``request`` over the stored one if that still has ``request.etag``."""
        try:
            self._table.update_entity(_entity(request), mode=UpdateMode.REPLACE, etag=request.etag,
                                      match_condition=MatchConditions.IfNotModified)
        except ResourceNotFoundError:
            raise RequestNotFound(request.request_id) from None
        except HttpResponseError as error:
            if error.status_code == 412:
                raise RequestChanged(f"approval request {request.request_id} was changed since it was read "
                                     f"(ETag {request.etag}); read it again") from None
            raise
        return self.get(request.request_id)


def approval_store(settings: Settings) -> ApprovalStore:
    store = ApprovalStore(table_service(settings))
    store.ensure()
    return store
